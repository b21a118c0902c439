{#- Root mail: Postfix as a null client through the cluster's authenticated relay. #}
{%- set ca_url = salt['pillar.get']('minicl:cluster:ca_url') %}
{%- set paths = salt['minicl.paths']() %}
{%- set ca_file = paths.cluster_ca %}
{#- On systemd, postfix.service is a oneshot wrapper that stays "active" when the master dies. #}
{%- set postfix_service = 'postfix@-' if grains.get('init') == 'systemd' else 'postfix' %}

minicl-postfix-preseed:
  minicl_mail.postfix_preseeded: []

minicl-mail-packages:
  pkg.installed:
    - pkgs:
      - postfix
      - libsasl2-modules
      - bsd-mailx
      - ca-certificates
    - require:
      - minicl_mail: minicl-postfix-preseed

minicl-mailname:
  file.managed:
    - name: {{ paths.mailname }}
    - contents: {{ salt['minicl_mail.mailname']() | json }}
    - require:
      - pkg: minicl-mail-packages

minicl-postfix-main-cf:
  file.managed:
    - name: {{ paths.postfix_main_cf }}
    - contents: {{ salt['minicl_mail.main_cf']() | json }}
    - require:
      - pkg: minicl-mail-packages

minicl-relay-credentials:
  minicl_mail.sasl_passwd:
    - name: {{ paths.sasl_passwd }}
    - require:
      - pkg: minicl-mail-packages

minicl-aliases:
  minicl_mail.aliases:
    - name: {{ paths.aliases }}
    - require:
      - pkg: minicl-mail-packages

minicl-postfix-log-rotation:
  file.managed:
    - name: {{ paths.postfix_logrotate }}
    - contents: |
        # Managed by minicl: Postfix writes {{ paths.postfix_log }} itself (maillog_file).
        {{ paths.postfix_log }} {
            weekly
            rotate 8
            compress
            delaycompress
            missingok
            notifempty
            postrotate
                postfix logrotate >/dev/null 2>&1 || true
            endscript
        }

{%- if ca_url %}
minicl-cluster-ca:
  file.managed:
    - name: {{ ca_file }}
    - source: {{ ca_url | json }}
    - skip_verify: True
    - mode: '0644'
    - check_cmd: openssl x509 -noout -in
    - require:
      - pkg: minicl-mail-packages
{%- else %}
minicl-cluster-ca:
  file.absent:
    - name: {{ ca_file }}
{%- endif %}

{%- if ca_url %}
minicl-trust-cluster-ca:
  minicl_mail.ca_trusted:
    - name: {{ ca_file }}
    - require:
      - file: minicl-cluster-ca
{%- else %}
minicl-trust-cluster-ca:
  cmd.run:
    - name: update-ca-certificates --fresh
    - onchanges:
      - file: minicl-cluster-ca
{%- endif %}

minicl-postfix-at-boot:
  service.enabled:
    - name: postfix
    - require:
      - pkg: minicl-mail-packages

minicl-postfix:
  service.running:
    - name: {{ postfix_service }}
    - watch:
      - file: minicl-postfix-main-cf
      - file: minicl-mailname
      - minicl_mail: minicl-relay-credentials

minicl-flush-mail-queue:
  cmd.run:
    - name: postqueue -f
    - onchanges:
      - minicl_mail: minicl-relay-credentials
      - minicl-trust-cluster-ca
    - require:
      - service: minicl-postfix
