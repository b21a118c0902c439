{#- The PostgreSQL apps of this host (cluster.json "apps"): see minicl.appliances.postgresql. #}
include:
  - minicl.apps.backups

minicl-postgresql-package:
  pkg.installed:
    - name: postgresql
{%- for name, app in salt['pillar.get']('minicl:apps', {}).items() if app['type'] == 'postgresql' %}
{%- if app.get('packages') %}

minicl-postgresql-{{ name }}-packages:
  pkg.installed:
    - pkgs: {{ app['packages'] | json }}
    - require_in:
      - minicl_postgresql: minicl-postgresql-{{ name }}
{%- endif %}

minicl-postgresql-{{ name }}:
  minicl_postgresql.running:
    - name: {{ name }}
    - require:
      - pkg: minicl-postgresql-package

minicl-postgresql-{{ name }}-databases:
  minicl_postgresql.databases:
    - name: {{ name }}
    - require:
      - minicl_postgresql: minicl-postgresql-{{ name }}
{%- endfor %}
