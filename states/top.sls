{#- minicl's top file. Each host gets the SLS files of its roles; the minicl pillar computes
    the list from cluster.json (minicl's own roles -> minicl.<role>, others -> roles.<role>). #}
base:
  '*':
{%- for sls in salt['pillar.get']('minicl:states', []) %}
    - {{ sls }}
{%- endfor %}
