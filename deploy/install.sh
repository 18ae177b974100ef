#!/usr/bin/env bash
# Install hashgov from this checkout as a systemd service. Run as root:
#   sudo deploy/install.sh             # install or upgrade (idempotent)
#   sudo deploy/install.sh --uninstall # remove the program and unit; keep config and data
#
# What it does (PREFIX is empty for a real install):
#   - system user and group "hashgov" (no login, no home)
#   - PREFIX/opt/hashgov/venv: a virtualenv with this checkout pip-installed (not editable)
#   - PREFIX/opt/hashgov/{docs,share}: operations guide; Prometheus, Grafana, mosquitto files
#   - PREFIX/etc/hashgov/hashgov.toml from the example, only if absent (root:hashgov 0640)
#   - PREFIX/etc/hashgov/credentials/{mqtt,miner}-password, empty if absent (root 0600;
#     systemd's LoadCredential hands them to the service)
#   - PREFIX/etc/systemd/system/hashgov.service; daemon-reload and enable (not start:
#     check the config and run in shadow mode first, see docs/operations.md)
#
# Options:
#   --prefix DIR    install under DIR (a throwaway root for tests/packaging); systemctl is
#                   never called then
#   --no-venv       do not create the virtualenv (no network / pip)
#   --skip-user     do not create the system user (needs root)
#   --no-systemctl  do not call systemctl even on a systemd host
#   --python PY     interpreter for the venv (default: python3)
#   --uninstall     disable and remove unit and /opt/hashgov; keep /etc/hashgov,
#                   /var/lib/hashgov and the hashgov user (it owns the data)
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=""
do_venv=1
do_user=1
do_systemctl=1
uninstall=0
python=${PYTHON:-python3}
user=hashgov

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --no-venv) do_venv=0; shift ;;
    --skip-user) do_user=0; shift ;;
    --no-systemctl) do_systemctl=0; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

if [ -n "$prefix" ]; then
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
  [ "$prefix" != "/" ] || prefix=""
fi
# systemctl only for a real root on a host booted with systemd
if [ -n "$prefix" ] || [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
  do_systemctl=0
fi
is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1
if [ -z "$prefix" ] && [ "$is_root" -eq 0 ]; then
  die "a real install needs root (or use --prefix DIR for a throwaway root)"
fi

opt=$prefix/opt/hashgov
etc=$prefix/etc/hashgov
unit_dir=$prefix/etc/systemd/system
unit=$unit_dir/hashgov.service

# chown only where it means something: as root, and when the group exists
group_of_service() {
  if [ "$is_root" -eq 1 ] && getent group "$user" >/dev/null 2>&1; then echo "$user"; else echo ""; fi
}

if [ "$uninstall" -eq 1 ]; then
  if [ "$do_systemctl" -eq 1 ]; then
    systemctl disable --now hashgov.service >/dev/null 2>&1 || true
  fi
  rm -f "$unit"
  if [ "$do_systemctl" -eq 1 ]; then systemctl daemon-reload; fi
  rm -rf "$opt"
  say "removed the unit and $opt; kept $etc, $prefix/var/lib/hashgov and user $user"
  exit 0
fi

# --- user
if [ "$do_user" -eq 1 ]; then
  [ "$is_root" -eq 1 ] || die "creating the system user needs root (or pass --skip-user)"
  if ! getent passwd "$user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/hashgov \
      --shell /usr/sbin/nologin --comment "hashgov power governor" "$user"
    say "created system user $user"
  fi
fi
group=$(group_of_service)

# --- program
install -d -m 0755 "$opt" "$opt/docs" "$opt/share"
if [ "$do_venv" -eq 1 ]; then
  if [ ! -x "$opt/venv/bin/python" ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "$python is older than 3.11"
    "$python" -m venv "$opt/venv"
  fi
  "$opt/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # a fresh build of the checkout, not an editable link into it
  "$opt/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$src"
  "$opt/venv/bin/hashgov" --help >/dev/null || die "installed hashgov does not run"
  say "installed hashgov into $opt/venv"
fi
install -m 0644 "$src/docs/operations.md" "$opt/docs/operations.md"
for d in prometheus grafana mosquitto; do
  install -d -m 0755 "$opt/share/$d"
  for f in "$src/deploy/$d"/*; do
    [ -f "$f" ] || continue
    mode=0644; [ -x "$f" ] && mode=0755
    install -m "$mode" "$f" "$opt/share/$d/"
  done
done

# --- configuration (never overwritten)
install -d -m 0750 "$etc"
if [ -n "$group" ]; then chown "root:$group" "$etc"; fi
if [ ! -e "$etc/hashgov.toml" ]; then
  install -m 0640 "$src/deploy/hashgov.example.toml" "$etc/hashgov.toml"
  if [ -n "$group" ]; then chown "root:$group" "$etc/hashgov.toml"; fi
  say "installed example config $etc/hashgov.toml: edit it, then: hashgov check-config $etc/hashgov.toml"
fi
install -d -m 0700 "$etc/credentials"
for cred in mqtt-password miner-password; do
  if [ ! -e "$etc/credentials/$cred" ]; then
    (umask 077; : > "$etc/credentials/$cred")
    say "created empty $etc/credentials/$cred: put the password in it"
  fi
  chmod 0600 "$etc/credentials/$cred"
  if [ "$is_root" -eq 1 ]; then chown root:root "$etc/credentials/$cred"; fi
done

# --- systemd unit
install -d -m 0755 "$unit_dir"
install -m 0644 "$src/deploy/systemd/hashgov.service" "$unit"
if [ "$do_systemctl" -eq 1 ]; then
  systemctl daemon-reload
  systemctl enable hashgov.service >/dev/null 2>&1
  say "enabled hashgov.service; start it with: systemctl start hashgov (try site.mode = \"shadow\" first)"
else
  say "installed $unit (systemctl not called)"
fi
