"""Where minicl keeps things on a host: one place for each path, used by the Python code and,
through ``salt['minicl.paths']()``, by the SLS files. (The files inside the config repo cache,
STATE_DIR by default, are laid out by ``minicl.configrepo.ConfigRepo``.)"""

STATE_DIR = "/var/lib/minicl"  # the config repo cache (mode 0700), registries, firewall backups
APPS_DIR = f"{STATE_DIR}/apps"  # per app: what its verbs record (the last good backup, ...)
BACKUPS_DIR = f"{STATE_DIR}/backups"  # per app: its restic repository
KEPT_PACKAGES_DIR = f"{STATE_DIR}/packages"  # .deb copies of versions an upgrade replaced
ETC_DIR = "/etc/minicl"  # deploy key, known_hosts, local firewall rules, break-glass switch
SALT_CONFIG_DIR = "/etc/salt"
SYSTEMD_RUN_DIR = "/run/systemd/system"  # exists when systemd runs the host
DEPLOY_KEY_NAME = "deploy.key"  # in ETC_DIR and at the top of the config repo
KNOWN_HOSTS_NAME = "known_hosts"  # in ETC_DIR

USERS_REGISTRY = f"{STATE_DIR}/users.json"  # the accounts minicl created
APPLIED_NAME = "applied.json"  # the commit this host last converged to, in the cache dir
APPLIED_FILE = f"{STATE_DIR}/{APPLIED_NAME}"

NFTABLES_CONF = "/etc/nftables.conf"
FIREWALL_SAVED = "/etc/nftables.d/minicl.nft"  # table inet minicl, loaded by nftables.service at boot
FIREWALL_LOCAL_RULES = f"{ETC_DIR}/firewall.local.nft"
FIREWALL_BREAK_GLASS = f"{ETC_DIR}/firewall.off"
DEADMAN_PIDFILE = "/run/minicl-firewall-deadman.pid"

SSHD_CONFIG = "/etc/ssh/sshd_config"
SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"
SSHD_DROPIN_NAME = "00-minicl.conf"
SSHD_DROPIN = f"{SSHD_DROPIN_DIR}/{SSHD_DROPIN_NAME}"

MAILNAME = "/etc/mailname"
POSTFIX_MAIN_CF = "/etc/postfix/main.cf"
SASL_PASSWD = "/etc/postfix/sasl_passwd"
ALIASES = "/etc/aliases"
CLUSTER_CA = "/usr/local/share/ca-certificates/minicl-cluster-ca.crt"
POSTFIX_LOG = "/var/log/postfix.log"
POSTFIX_LOGROTATE = "/etc/logrotate.d/minicl-postfix"

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's node exporter textfile collector
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
PROMETHEUS_RULES = "/etc/prometheus/minicl.rules.yml"
PROMETHEUS_NODE_TARGETS = "/etc/prometheus/minicl-nodes.json"
PROMETHEUS_MONITOR_TARGETS = "/etc/prometheus/minicl-monitors.json"
PROMETHEUS_APP_TARGETS = "/etc/prometheus/minicl-app-{kind}.json"  # one per app type with an exporter
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
ALERTMANAGER_DEFAULTS = "/etc/default/prometheus-alertmanager"


def as_dict():
    """Every path above by its lower-case name, as the SLS files get them."""
    return {name.lower(): value for name, value in globals().items() if name.isupper()}
