{#- sshd without password logins (after the firewall, which opens its port first). #}
minicl-sshd:
  minicl_sshd.hardened:
    - name: /etc/ssh/sshd_config.d/00-minicl.conf
    - require:
      - pkg: minicl-admin-packages
