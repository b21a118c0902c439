{#- The Redis apps of this host (cluster.json "apps"): see minicl.appliances.redis. #}
include:
  - minicl.apps.backups

minicl-redis-package:
  pkg.installed:
    - name: redis-server
{%- for name, app in salt['pillar.get']('minicl:apps', {}).items() if app['type'] == 'redis' %}
{%- if app.get('packages') %}

minicl-redis-{{ name }}-packages:
  pkg.installed:
    - pkgs: {{ app['packages'] | json }}
    - require_in:
      - minicl_redis: minicl-redis-{{ name }}
{%- endif %}

minicl-redis-{{ name }}:
  minicl_redis.running:
    - name: {{ name }}
    - require:
      - pkg: minicl-redis-package
{%- endfor %}
