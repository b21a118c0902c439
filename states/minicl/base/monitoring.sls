{#- Every host: a node exporter for the monitor. Its port is open to cluster hosts only (the
    firewall trusts them); minicl's returner and checks feed its textfile collector. #}
minicl-node-exporter:
  pkg.installed:
    - name: prometheus-node-exporter
    - install_recommends: False
  service.running:
    - name: prometheus-node-exporter
    - enable: True
    - require:
      - pkg: minicl-node-exporter
