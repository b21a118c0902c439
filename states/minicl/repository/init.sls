{#- The repository role: the cluster's apt repository (cluster.json packages), made with aptly
    and served by nginx to the cluster's hosts only. See minicl.aptrepo. #}
{%- set port = salt['pillar.get']('minicl:packages:repository:settings:port', 8080) %}

minicl-repository-packages:
  pkg.installed:
    - pkgs: [aptly, gnupg, nginx]

minicl-repository:
  minicl_packages.repository:
    - name: minicl
    - require:
      - pkg: minicl-repository-packages

minicl-repository-site:
  file.managed:
    - name: /etc/nginx/sites-available/minicl-repository
    - contents: {{ salt['minicl_repository.nginx_site'](port) | json }}
    - require:
      - pkg: minicl-repository-packages

minicl-repository-site-enabled:
  file.symlink:
    - name: /etc/nginx/sites-enabled/minicl-repository
    - target: /etc/nginx/sites-available/minicl-repository
    - require:
      - file: minicl-repository-site

minicl-repository-nginx:
  service.running:
    - name: nginx
    - enable: true
    - reload: true
    - watch:
      - file: minicl-repository-site
      - file: minicl-repository-site-enabled
    - require:
      - minicl_packages: minicl-repository
