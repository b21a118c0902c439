{#- Records which config commit this host converged to, for people and for monitoring. #}
{%- set status = salt['pillar.get']('minicl:status', {}) %}
{%- set host = salt['pillar.get']('minicl:host', {}) %}
minicl-applied-config:
  file.serialize:
    - name: {{ salt['pillar.get']('minicl:applied_file') }}
    - serializer: json
    - mode: '0644'
    - makedirs: True
    - dataset:
        commit: {{ status.get('commit') | json }}
        commit_time: {{ status.get('commit_time') | json }}
        host: {{ host.get('name') | json }}
        roles: {{ host.get('roles', []) | json }}
    - order: last
