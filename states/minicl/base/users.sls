{#- Cluster users on every host: accounts, passwords, sudo, exactly the listed SSH keys. #}
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
