{#- Central logging (cluster.json "logging"): syslog-ng sends this host's journal over TLS to
    the log host (see minicl.centrallog), with this host's certificate from the logging CA
    (minicl.logcerts). Nothing without a logging section: journald alone, as before. #}
{%- set logging = salt['pillar.get']('minicl:logging') %}
{%- if logging %}

minicl-logging-packages:
  pkg.installed:
    - pkgs: [syslog-ng-core, syslog-ng-scl, syslog-ng-mod-python]
    - install_recommends: False
{%- if logging.is_log_host %}

minicl-logging-drain:
  file.managed:
    - name: /etc/systemd/system/syslog-ng.service.d/minicl-drain.conf
    - contents: {{ salt['minicl_logging.drain_dropin']() | json }}
    - mode: '0644'
    - makedirs: True

minicl-logging-drain-loaded:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: minicl-logging-drain
    - require_in:
      - service: minicl-logging-syslog-ng
{%- else %}

{#- syslog-ng's Python reads the module once: a new one needs a restart, not a reload. #}
minicl-logging-shipper:
  file.managed:
    - name: /etc/syslog-ng/python/minicl_logship.py
    - contents: {{ salt['minicl_logging.shipper']() | json }}
    - mode: '0644'
    - makedirs: True
    - require:
      - pkg: minicl-logging-packages
    - require_in:
      - file: minicl-logging-syslog-ng-conf

minicl-logging-shipper-restart:
  cmd.run:
    - name: systemctl restart syslog-ng
    - onchanges:
      - file: minicl-logging-shipper
    - require:
      - service: minicl-logging-syslog-ng
{%- endif %}

minicl-logging-certificate:
  minicl_logging.certificate:
    - name: /etc/syslog-ng/minicl/host.crt
    - require:
      - pkg: minicl-logging-packages

minicl-logging-syslog-ng-conf:
  file.managed:
    - name: /etc/syslog-ng/syslog-ng.conf
    - contents: {{ salt['minicl_logging.syslog_ng_conf']() | json }}
    - mode: '0644'
    - check_cmd: syslog-ng --syntax-only -f
    - require:
      - minicl_logging: minicl-logging-certificate

minicl-logging-syslog-ng:
  service.running:
    - name: syslog-ng
    - enable: True
    - reload: True
    - watch:
      - file: minicl-logging-syslog-ng-conf
      - minicl_logging: minicl-logging-certificate
{%- if logging.is_log_host %}
      - file: minicl-logging-drain
{%- endif %}
{%- for path, text in salt['minicl_logging.metrics_units']().items() %}

minicl-logging-metrics-{{ path.rsplit('.', 1)[1] }}:
  file.managed:
    - name: {{ path }}
    - contents: {{ text | json }}
    - mode: '0644'
{%- endfor %}

minicl-logging-metrics:
  service.running:
    - name: minicl-log-metrics.timer
    - enable: True
    - watch:
      - file: minicl-logging-metrics-service
      - file: minicl-logging-metrics-timer
{%- endif %}
