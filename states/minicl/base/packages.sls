{#- Every host that uses the cluster's repository (cluster.json packages): apt points at the
    snapshot the host is at, trusting packages.key.pub only. Upgrades are minicl_upgrade's. #}
{%- if salt['pillar.get']('minicl:packages:use', 'none') != 'none' %}
minicl-upgrade-tools:
  pkg.installed:
    - pkgs: [needrestart]
    - install_recommends: False

minicl-apt-source:
  minicl_packages.source:
    - name: minicl
{%- if salt['pillar.get']('minicl:packages:repository') %}
    - require:
      - service: minicl-repository-nginx  {#- this host serves the repository: after it is up #}
{%- endif %}

{#- After every other state of the run (the apps are converged). Salt runs states of the same
    order by state name: minicl_packages before minicl_release (minicl's own update). #}
minicl-package-upgrades:
  minicl_packages.upgraded:
    - name: minicl
    - order: last
    - require:
      - minicl_packages: minicl-apt-source
{%- endif %}
