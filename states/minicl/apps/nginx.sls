{#- The nginx app of this host (cluster.json "apps"): see minicl.appliances.nginx. #}
include:
  - minicl.apps.backups

minicl-nginx-package:
  pkg.installed:
    - name: nginx
{%- set apps = salt['pillar.get']('minicl:apps', {}) %}
{%- set acme = namespace(sites=0) %}
{%- for app in apps.values() if app['type'] == 'nginx' %}
{%- for site in app['sites'].values() if (site.get('tls') or {}).get('acme') %}
{%- set acme.sites = acme.sites + 1 %}
{%- endfor %}
{%- endfor %}
{%- if acme.sites %}

{#- Sites with tls: acme get their certificates with certbot; minicl's runs renew them
    (minicl.acme): Debian's timer would renew by other rules and, for a private ACME server,
    without its CA. #}
minicl-nginx-certbot:
  pkg.installed:
    - name: certbot
    - install_recommends: False

minicl-nginx-certbot-timer:
  service.dead:
    - name: certbot.timer
    - enable: False
    - require:
      - pkg: minicl-nginx-certbot
    - require_in:
{%- for name, app in apps.items() if app['type'] == 'nginx' %}
      - minicl_nginx: minicl-nginx-{{ name }}
{%- endfor %}
{%- endif %}
{%- for name, app in apps.items() if app['type'] == 'nginx' %}
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
