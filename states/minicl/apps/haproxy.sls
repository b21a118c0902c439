{#- The front apps of this host (cluster.json "apps", type haproxy): see minicl.appliances.haproxy. #}
minicl-haproxy-packages:
  pkg.installed:
    - pkgs:
      - haproxy
      - keepalived
      - certbot
    - install_recommends: False

{#- minicl's runs renew the certificates (minicl.acme): Debian's timer would renew by other rules
    and, for a private ACME server, without its CA. #}
minicl-haproxy-certbot-timer:
  service.dead:
    - name: certbot.timer
    - enable: False
    - require:
      - pkg: minicl-haproxy-packages
{%- for name, app in salt['pillar.get']('minicl:apps', {}).items() if app['type'] == 'haproxy' %}
{%- if app.get('packages') %}

minicl-haproxy-{{ name }}-packages:
  pkg.installed:
    - pkgs: {{ app['packages'] | json }}
    - require_in:
      - minicl_haproxy: minicl-haproxy-{{ name }}
{%- endif %}

minicl-haproxy-{{ name }}:
  minicl_haproxy.running:
    - name: {{ name }}
    - require:
      - pkg: minicl-haproxy-packages
{%- endfor %}
