{#- The log role: this host's syslog-ng (minicl.base.logging) also receives every host's lines
    over TLS and stores them per host and day under /var/log/minicl/hosts; systemd-tmpfiles
    drops files older than logging.retention. The port answers cluster hosts only (firewall). #}
include:
  - minicl.base

minicl-log-retention:
  file.managed:
    - name: /etc/tmpfiles.d/minicl-logging.conf
    - contents: {{ salt['minicl_logging.tmpfiles']() | json }}
    - mode: '0644'

minicl-log-dir:
  cmd.run:
    - name: systemd-tmpfiles --create /etc/tmpfiles.d/minicl-logging.conf
    - onchanges:
      - file: minicl-log-retention
    - require_in:
      - service: minicl-logging-syslog-ng
