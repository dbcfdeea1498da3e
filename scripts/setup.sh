#!/usr/bin/env bash
# Set terrastill up on a fresh machine: a virtual environment with the package and its
# dependencies, the web map's npm packages, and with --test the system packages the test
# suite drives for real (Debian's Chromium for the browser test, PostgreSQL + PostGIS for the
# STAC API server). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
  compgen -G "/usr/share/postgresql/*/extension/postgis.control" >/dev/null \
    || missing+=(postgresql-postgis)
  if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "note: not root, cannot install ${missing[*]}; tests needing them will skip" >&2
    fi
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

if [ -f web/package.json ]; then
  npm ci --prefix web --no-audit --no-fund --loglevel=error
  npm run --prefix web --silent build
fi
