{#- Cluster users on every host, and sshd without password logins. #}
minicl-admin-packages:
  pkg.installed:
    - pkgs:
      - sudo
      - openssh-server

minicl-users:
  minicl_users.managed:
    - name: cluster users
    - require:
      - pkg: minicl-admin-packages

minicl-sshd:
  minicl_sshd.hardened:
    - name: /etc/ssh/sshd_config.d/00-minicl.conf
    - require:
      - pkg: minicl-admin-packages
