{#- The monitor role: Prometheus scrapes every host of cluster.json and alerts through a local
    Alertmanager, which mails admin_email through this host's Postfix. Every file is checked
    with promtool/amtool before it replaces the running one. #}
include:
  - minicl.base

minicl-monitor-packages:
  pkg.installed:
    - pkgs:
      - prometheus
      - prometheus-alertmanager
    - install_recommends: False

{%- set paths = salt['minicl.paths']() %}
{%- for name, function, check in [
      (paths.prometheus_node_targets, 'node_targets', None),
      (paths.prometheus_monitor_targets, 'monitor_targets', None),
      (paths.prometheus_rules, 'rules', 'promtool check rules'),
      (paths.prometheus_config, 'prometheus_config', 'promtool check config --syntax-only'),
      (paths.prometheus_defaults, 'prometheus_defaults', None),
      (paths.alertmanager_config, 'alertmanager_config', 'amtool check-config'),
      (paths.alertmanager_defaults, 'alertmanager_defaults', None),
    ] %}

minicl-monitor-{{ function }}:
  file.managed:
    - name: {{ name }}
    - contents: {{ salt['minicl_monitor.' ~ function]() | json }}
    - mode: '0644'
{%- if check %}
    - check_cmd: {{ check }}
{%- endif %}
    - require:
      - pkg: minicl-monitor-packages
{%- endfor %}

{#- One file per app type with an exporter: Prometheus scrapes them as a job of that type. #}
{%- for path, contents in salt['minicl_monitor.app_targets']().items() %}

minicl-monitor-app-targets-{{ path }}:
  file.managed:
    - name: {{ path }}
    - contents: {{ contents | json }}
    - mode: '0644'
    - require:
      - pkg: minicl-monitor-packages
    - require_in:
      - service: minicl-prometheus
{%- endfor %}

{#- Alertmanager first (states run in file order): Prometheus sends to it from its first
    evaluation on. No hard requisite: a broken Alertmanager must not keep Prometheus down. #}
minicl-alertmanager:
  service.running:
    - name: prometheus-alertmanager
    - enable: True
    - watch:
      - file: minicl-monitor-alertmanager_config
      - file: minicl-monitor-alertmanager_defaults

{#- The target files need no restart: Prometheus watches them (file_sd). #}
minicl-prometheus:
  service.running:
    - name: prometheus
    - enable: True
    - require:
      - file: minicl-monitor-node_targets
      - file: minicl-monitor-monitor_targets
    - watch:
      - file: minicl-monitor-rules
      - file: minicl-monitor-prometheus_config
      - file: minicl-monitor-prometheus_defaults
