{#- Root mail: Postfix as a null client through the cluster's authenticated relay. #}
{%- set ca_url = salt['pillar.get']('minicl:cluster:ca_url') %}
minicl-mail-packages:
  pkg.installed:
    - pkgs:
      - postfix
      - bsd-mailx
      - ca-certificates

minicl-mailname:
  file.managed:
    - name: /etc/mailname
    - contents: {{ salt['minicl_mail.mailname']() | json }}
    - require:
      - pkg: minicl-mail-packages

minicl-postfix-main-cf:
  file.managed:
    - name: /etc/postfix/main.cf
    - contents: {{ salt['minicl_mail.main_cf']() | json }}
    - require:
      - pkg: minicl-mail-packages

minicl-relay-credentials:
  minicl_mail.sasl_passwd:
    - name: /etc/postfix/sasl_passwd
    - require:
      - pkg: minicl-mail-packages

minicl-aliases:
  file.managed:
    - name: /etc/aliases
    - contents: {{ salt['minicl_mail.aliases']() | json }}
  cmd.run:
    - name: newaliases
    - onchanges:
      - file: minicl-aliases
    - require:
      - pkg: minicl-mail-packages

{%- if ca_url %}
minicl-cluster-ca:
  file.managed:
    - name: /usr/local/share/ca-certificates/minicl-cluster-ca.crt
    - source: {{ ca_url | json }}
    - skip_verify: True
    - mode: '0644'
    - check_cmd: openssl x509 -noout -in
  cmd.run:
    - name: update-ca-certificates
    - onchanges:
      - file: minicl-cluster-ca
{%- endif %}

minicl-postfix:
  service.running:
    - name: postfix
    - enable: True
    - watch:
      - file: minicl-postfix-main-cf
      - file: minicl-mailname
      - minicl_mail: minicl-relay-credentials
{%- if ca_url %}
      - cmd: minicl-cluster-ca
{%- endif %}

minicl-flush-mail-queue:
  cmd.run:
    - name: postqueue -f
    - onchanges:
      - minicl_mail: minicl-relay-credentials
{%- if ca_url %}
      - cmd: minicl-cluster-ca
{%- endif %}
    - require:
      - service: minicl-postfix
