#!/usr/bin/env bash
# Prepare a checkout to run: system packages (mosquitto, prometheus for promtool),
# a virtualenv in .venv with hashgov and its dev tools. Idempotent and quiet when
# there is nothing to do. Used by the README's two commands.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} (apt-get)" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" python3-venv >/dev/null
  # the packages start system services we do not want; tests start their own brokers
  for svc in mosquitto prometheus prometheus-node-exporter; do
    "${sudo_cmd[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py=$cand; break
    fi
  done
fi
[ -n "$py" ] || { echo "bootstrap: need Python >= 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $py" >&2
  "$py" -m venv .venv
fi
stamp=.venv/.hashgov-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing hashgov[dev] into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
