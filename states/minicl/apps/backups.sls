{#- What every app of this host shares: restic for its backups and dpkg-repack for its upgrades
    (see minicl.appliances.backups and .upgrades), and a systemd timer per app that backs it up
    when a backup is due. Included by each app type's SLS. #}
minicl-apps-tools:
  pkg.installed:
    - pkgs: [restic, dpkg-repack]
{#- Apps whose appliance keeps no data (nginx) have no backups. #}
{%- for name in salt['pillar.get']('minicl:apps', {}) if salt['minicl_app.verbs'](name).get('backup') %}
{%- for path, text in salt['minicl_app.backup_units'](name).items() %}

minicl-backup-{{ name }}-{{ path.rsplit('.', 1)[1] }}:
  file.managed:
    - name: {{ path }}
    - contents: {{ text | json }}
    - mode: '0644'
{%- endfor %}

minicl-backup-{{ name }}-schedule:
  service.running:
    - name: minicl-backup-{{ name }}.timer
    - enable: True
    - require:
      - pkg: minicl-apps-tools
    - watch:
      - file: minicl-backup-{{ name }}-service
      - file: minicl-backup-{{ name }}-timer
{%- endfor %}
