#!/usr/bin/env bash
# Installs the snapscan appliance on a systemd host, as an operator would by
# hand, and says what it did:
#   1. the service user and group "snapscan" (system account, no login
#      shell, home /var/lib/snapscan);
#   2. folders with their modes: /etc/snapscan 0750 root:snapscan (and tls/),
#      /var/lib/snapscan 0700 and /var/log/snapscan 0750 snapscan:snapscan;
#   3. the binary as /usr/local/bin/snapscan (0755);
#   4. the configuration /etc/snapscan/appliance.yaml (0640 root:snapscan),
#      from --config or deploy/appliance.yaml, never over an existing one;
#   5. the secrets the shipped configuration names, each only if absent,
#      0640 root:snapscan: /etc/snapscan/api.tokens (one random API token
#      for the operators; give it to clients as their token_file) and
#      /etc/snapscan/receiver.token (the push token of the signature
#      receiver); /etc/snapscan/sigserver.token and signing.pub come from
#      the central signature server's operator (--server-token, --trusted-key);
#   6. TLS: a self-signed certificate for --hostname (default: this host's
#      name) in /etc/snapscan/tls/appliance.{crt,key} (key 0640 root:snapscan)
#      unless both exist: replace them with certificates of your CA for
#      production, the file names stay;
#   7. checks the configuration ("snapscan serve --check");
#   8. the systemd unit /etc/systemd/system/snapscan.service, generated from
#      the configuration ("snapscan serve --print-unit": datastores in
#      ReadOnlyPaths, block devices allowed read-only when a datastore is
#      under /dev), checked with systemd-analyze verify, and systemd reloaded.
# It does not enable or start the service: "systemctl enable --now snapscan".
# Run it again after changing datastores: it regenerates the unit and keeps
# everything else.
#
# Usage: deploy/install.sh [--bin FILE] [--config FILE] [--trusted-key FILE]
#          [--server-token FILE] [--hostname NAME] [--root DIR]
# --root DIR installs into a staging tree DIR instead of / (an image being
# built, or a test): the user goes into DIR/etc/passwd (useradd --prefix),
# and the paths in the installed configuration and unit point into DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH=$PATH:/usr/sbin:/sbin

root=/ bin="" config="$here/appliance.yaml" key="" stoken=""
host=$(hostname -f 2>/dev/null || hostname)
while [ $# -gt 0 ]; do
	case $1 in
	--bin) bin=$2; shift 2 ;;
	--config) config=$2; shift 2 ;;
	--trusted-key) key=$2; shift 2 ;;
	--server-token) stoken=$2; shift 2 ;;
	--hostname) host=$2; shift 2 ;;
	--root) root=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
R=${root%/}                # "" for the real root
etc=$R/etc/snapscan
say() { echo "install.sh: $*"; }
if [ -z "$bin" ]; then
	bin=$(command -v snapscan || true)
	[ -n "$bin" ] || { echo "install.sh: no snapscan binary: pass --bin FILE (scripts/build.sh makes one)" >&2; exit 2; }
fi
command -v openssl >/dev/null || { echo "install.sh: openssl is needed for tokens and TLS" >&2; exit 2; }

# 1. The service user.
prefix=()
[ -z "$R" ] || prefix=(--prefix "$R")
if ! grep -q '^snapscan:' "$R/etc/passwd"; then
	useradd "${prefix[@]}" --system --user-group --home-dir /var/lib/snapscan --no-create-home \
		--shell /usr/sbin/nologin --comment "snapscan appliance" snapscan
	say "created system user snapscan"
fi
uid=$(awk -F: '$1 == "snapscan" {print $3}' "$R/etc/passwd")
gid=$(awk -F: '$1 == "snapscan" {print $3}' "$R/etc/group")

# 2. Folders and modes.
install -d -m 0755 "$R/usr/local/bin" "$R/etc/systemd/system"
install -d -m 0750 -o 0 -g "$gid" "$etc" "$etc/tls"
install -d -m 0700 -o "$uid" -g "$gid" "$R/var/lib/snapscan"
install -d -m 0750 -o "$uid" -g "$gid" "$R/var/log/snapscan"

# 3. The binary.
install -m 0755 "$bin" "$R/usr/local/bin/snapscan"
snapscan=$R/usr/local/bin/snapscan
say "installed $("$snapscan" version | head -1) as $snapscan"

# 4. The configuration, never over an existing one.
cfg=$etc/appliance.yaml
if [ ! -e "$cfg" ]; then
	if [ -n "$R" ]; then
		sed -e "s#/etc/snapscan/#$R/etc/snapscan/#g" -e "s#/var/lib/snapscan/#$R/var/lib/snapscan/#g" \
			-e "s#/var/log/snapscan/#$R/var/log/snapscan/#g" "$config" >"$cfg"
	else
		cp "$config" "$cfg"
	fi
	chown 0:"$gid" "$cfg"
	chmod 0640 "$cfg"
	say "installed $cfg from $config: edit datastores, name and URLs, then run this again"
fi

# 5. Secrets, each only if absent.
secret() { # FILE: a new random token, readable by the service only
	if [ ! -e "$1" ]; then
		(umask 077; { echo "# $2"; openssl rand -hex 32; } >"$1")
		chown 0:"$gid" "$1"
		chmod 0640 "$1"
		say "created $1 ($2)"
	fi
}
secret "$etc/api.tokens" "API bearer tokens, one a line: give one to each operator as their token_file"
secret "$etc/receiver.token" "push token of the signature receiver: for the central server or sig push"
copy_secret() { # SRC DST MODE
	if [ -n "$1" ] && [ ! -e "$2" ]; then
		install -m "$3" -o 0 -g "$gid" "$1" "$2"
		say "installed $2"
	fi
}
copy_secret "$key" "$etc/signing.pub" 0644
copy_secret "$stoken" "$etc/sigserver.token" 0640

# 6. TLS: self-signed unless a certificate and key are there.
crt=$etc/tls/appliance.crt tlskey=$etc/tls/appliance.key
if [ ! -e "$crt" ] || [ ! -e "$tlskey" ]; then
	san="DNS:$host,DNS:localhost,IP:127.0.0.1"
	(umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
		-subj "/CN=$host" -addext "subjectAltName=$san" -keyout "$tlskey" -out "$crt" 2>/dev/null)
	chown 0:"$gid" "$tlskey" "$crt"
	chmod 0640 "$tlskey"
	chmod 0644 "$crt"
	say "created a self-signed TLS certificate for $host ($crt; clients trust it with --ca or ca:)"
fi

# 7. The configuration must be right before a unit is made from it.
"$snapscan" serve --config "$cfg" --check

# 8. The unit, from the configuration.
unit=$R/etc/systemd/system/snapscan.service
"$snapscan" serve --config "$cfg" --print-unit >"$unit.new"
chmod 0644 "$unit.new"
mv "$unit.new" "$unit"
systemd-analyze verify "$unit"
say "wrote $unit (systemd-analyze verify: ok)"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	say "systemd reloaded; start with: systemctl enable --now snapscan"
fi
