{#- The scheduled highstate: jobs for salt-minion (minicl-minion.service, installed by
    minicl-bootstrap on systemd hosts), with the timing of cluster.json. A masterless minion
    reads its schedule at start, so a changed schedule restarts it (if it runs): in the background,
    and the minion lets the run in progress finish first. Without systemd, restart it yourself. #}
minicl-schedule:
  file.managed:
    - name: {{ salt['minicl.schedule_file']() }}
    - contents: {{ salt['minicl.schedule_config']() | json }}
    - mode: '0644'

minicl-minion-restart:
  cmd.run:
    - name: systemctl try-restart minicl-minion.service
    - bg: True
    - onlyif: test -d /run/systemd/system && systemctl is-enabled --quiet minicl-minion.service
    - onchanges:
      - file: minicl-schedule
