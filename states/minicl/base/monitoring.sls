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
{#- The exporters of this host's apps (see minicl.appliances): their ports answer cluster hosts
    only, like the apps' own (minicl.firewall). #}
{%- for exporter in salt['minicl_monitor.app_exporters']() %}

minicl-exporter-{{ exporter.app }}:
  pkg.installed:
    - name: {{ exporter.package }}
    - install_recommends: False
{%- if exporter.defaults is not none %}
  file.managed:
    - name: {{ exporter.defaults_file }}
    - contents: {{ exporter.defaults | json }}
    - mode: '0600'
    - show_changes: {{ not exporter.secret }}
    - require:
      - pkg: minicl-exporter-{{ exporter.app }}
{%- endif %}
  service.running:
    - name: {{ exporter.service }}
    - enable: True
    - require:
      - pkg: minicl-exporter-{{ exporter.app }}
{%- if exporter.defaults is not none %}
    - watch:
      - file: minicl-exporter-{{ exporter.app }}
{%- endif %}
{%- endfor %}
