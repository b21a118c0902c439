{#- The IP-ACL firewall (table inet minicl), kept across reboots by Debian's nftables service. #}
{%- set paths = salt['minicl.paths']() %}
minicl-nftables:
  pkg.installed:
    - name: nftables

minicl-firewall:
  minicl_firewall.applied:
    - name: inet minicl
    - require:
      - pkg: minicl-nftables

minicl-firewall-at-boot:
  file.append:
    - name: {{ paths.nftables_conf }}
    - text: include "{{ paths.firewall_saved }}"
    - require:
      - minicl_firewall: minicl-firewall
{%- if grains.get('init') == 'systemd' %}
  service.enabled:
    - name: nftables
{%- endif %}
