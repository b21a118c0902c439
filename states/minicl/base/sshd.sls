{#- sshd without password logins (after the firewall, which opens its port first). #}
minicl-sshd:
  minicl_sshd.hardened:
    - name: {{ salt['minicl.paths']().sshd_dropin }}
    - require:
      - pkg: minicl-admin-packages
