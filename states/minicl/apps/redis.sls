{#- The Redis apps of this host (cluster.json "apps"): see minicl.appliances.redis. #}
minicl-redis-package:
  pkg.installed:
    - name: redis-server
{%- for name, app in salt['pillar.get']('minicl:apps', {}).items() if app['type'] == 'redis' %}

minicl-redis-{{ name }}:
  minicl_redis.running:
    - name: {{ name }}
    - require:
      - pkg: minicl-redis-package
{%- endfor %}
