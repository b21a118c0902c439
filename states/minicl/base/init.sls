{#- minicl's base role: on every host. Later parts of minicl add their SLS files here. #}
include:
  - minicl.base.users
  - minicl.base.packages
  - minicl.base.firewall
  - minicl.base.sshd
  - minicl.base.mail
  - minicl.base.monitoring
  - minicl.base.logging
  - minicl.base.schedule
  - minicl.base.applied
  - minicl.base.left_out
  - minicl.base.release
