{#- The nginx app of this host (cluster.json "apps"): see minicl.appliances.nginx. #}
include:
  - minicl.apps.backups

minicl-nginx-package:
  pkg.installed:
    - name: nginx
{%- for name, app in salt['pillar.get']('minicl:apps', {}).items() if app['type'] == 'nginx' %}
{%- if app.get('packages') %}

minicl-nginx-{{ name }}-packages:
  pkg.installed:
    - pkgs: {{ app['packages'] | json }}
    - require_in:
      - minicl_nginx: minicl-nginx-{{ name }}
{%- endif %}

minicl-nginx-{{ name }}:
  minicl_nginx.running:
    - name: {{ name }}
    - require:
      - pkg: minicl-nginx-package
{%- endfor %}
