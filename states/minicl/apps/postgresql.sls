{#- The PostgreSQL apps of this host (cluster.json "apps"): see minicl.appliances.postgresql. #}
minicl-postgresql-package:
  pkg.installed:
    - pkgs: [postgresql, restic, dpkg-repack]
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
{%- for path, text in salt['minicl_app.backup_units'](name).items() %}

minicl-backup-{{ name }}-{{ path.rsplit('.', 1)[1] }}:
  file.managed:
    - name: {{ path }}
    - contents: {{ text | json }}
    - mode: '0644'
{%- endfor %}

minicl-backup-{{ name }}-schedule:
  service.running:
    - name: minicl-backup-{{ name }}.timer
    - enable: True
    - watch:
      - file: minicl-backup-{{ name }}-service
      - file: minicl-backup-{{ name }}-timer
{%- endfor %}
