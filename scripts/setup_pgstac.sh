#!/usr/bin/env bash
# Install what the real-STAC-API tests need: Debian's PostgreSQL + PostGIS (the test fixture in
# tests/stac_server.py creates a throwaway cluster itself with initdb, as the `postgres` user
# when run as root, on a free loopback port; nothing is started here), and check that the
# Python side (stac-fastapi.pgstac, pypgstac[psycopg]) is importable from the venv.
#
# Idempotent: installs only what is missing. Needs root for apt-get; as a normal user it only
# reports what is missing (the pgstac tests then skip with a reason).
#
#   bash scripts/setup_pgstac.sh            # install + check
#   bash scripts/setup_pgstac.sh --check    # check only (exit 1 if something is missing)
#   bash scripts/setup_pgstac.sh --smoke    # also start a server once and time it
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-install}"
PY="${PYTHON:-.venv/bin/python}"

have_pg() { compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; }
have_postgis() { compgen -G "/usr/share/postgresql/*/extension/postgis.control" >/dev/null; }

missing=()
have_pg || missing+=(postgresql)
# `postgis` alone only *recommends* the extension; postgresql-postgis pulls
# postgresql-<major>-postgis-3 (the extension files) for the default PostgreSQL.
have_postgis || missing+=(postgresql-postgis)

if ((${#missing[@]})); then
  if [ "$mode" = "--check" ]; then
    echo "missing: ${missing[*]}" >&2
    exit 1
  fi
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "note: not root; cannot install ${missing[*]}; pgstac tests will skip" >&2
    exit 0
  fi
fi

# Debian's postgresql package creates and may start a default cluster (15/main on :5432); the
# tests do not use it. Running as root, initdb needs the postgres user to exist.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "error: user 'postgres' missing (the Debian package creates it)" >&2
  exit 1
fi

pg_bin="$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" | sort -V | tail -1)")"
echo "PostgreSQL: $("$pg_bin/postgres" --version)  PostGIS: $(basename "$(compgen -G \
  "/usr/share/postgresql/*/extension/postgis--*.sql" | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' \
  | sort -V | tail -1)")"

if [ -x "$PY" ]; then
  "$PY" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("stac_fastapi.pgstac", "pypgstac", "psycopg", "uvicorn")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages {missing}: pip install -e '.[dev]'")
import pypgstac
print(f"pypgstac {pypgstac.__version__}")
EOF
fi

if [ "$mode" = "--smoke" ]; then
  "$PY" scripts/start_stac_server.py --smoke
fi
