#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the store tests; safe to run again.
#
#   eval "$(scripts/start_postgres.sh)"     # exports DYNANOISE_TEST_POSTGRES_URL
#
# Env: PGDATA_DIR (default /tmp/dynanoise-pg: cluster, socket, log),
#      PGPORT (default 5432; the next free port is used if it is taken).
# Installs the Debian `postgresql` package when no initdb is found. As root,
# the server runs as the `postgres` OS user (initdb refuses root).
# Only the `export ...` line goes to stdout; progress goes to stderr.
set -euo pipefail

PGDATA_DIR="${PGDATA_DIR:-/tmp/dynanoise-pg}"
PORT="${PGPORT:-5432}"
DATA="$PGDATA_DIR/data"
SOCKET_DIR="$PGDATA_DIR/run"
LOG="$PGDATA_DIR/postgres.log"
ROLE=dynanoise
PASSWORD=dynanoise
DATABASE=dynanoise_test

say() { echo "start_postgres: $*" >&2; }

find_bindir() {
    local candidate
    if candidate="$(command -v initdb 2>/dev/null)"; then
        dirname "$(readlink -f "$candidate")"
        return 0
    fi
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$candidate/initdb" && -x "$candidate/postgres" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if ! BINDIR="$(find_bindir)"; then
    say "PostgreSQL not found; installing the Debian package"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postgresql >&2
    BINDIR="$(find_bindir)" || { say "initdb still not found after install"; exit 1; }
fi

# Run a command as the cluster owner: `postgres` when we are root, else ourselves.
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PGDATA_DIR" --shell /bin/sh postgres
    as_owner() { runuser -u postgres -- "$@"; }
    STOP_PREFIX="runuser -u postgres -- "
else
    as_owner() { "$@"; }
fi

mkdir -p "$PGDATA_DIR" "$SOCKET_DIR"
if [[ "$(id -u)" == 0 ]]; then chown postgres "$PGDATA_DIR" "$SOCKET_DIR"; fi
chmod 700 "$PGDATA_DIR"

if [[ ! -s "$DATA/PG_VERSION" ]]; then
    say "creating a cluster in $DATA"
    as_owner "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >&2
fi

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    PORT="$(sed -n 4p "$DATA/postmaster.pid")"
    say "already running on port $PORT"
else
    while port_taken "$PORT"; do
        say "port $PORT is taken by another program; trying $((PORT + 1))"
        PORT=$((PORT + 1))
    done
    say "starting on 127.0.0.1:$PORT (log: $LOG)"
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-p $PORT -k $SOCKET_DIR -c listen_addresses=127.0.0.1" start >&2
fi

for _ in $(seq 1 60); do
    if "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 1
done
"$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { say "server did not become ready"; exit 1; }

as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres \
    -d postgres >&2 <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
        CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
    ELSE
        ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $DATABASE OWNER $ROLE'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE') \gexec
SQL

say "ready; stop with: ${STOP_PREFIX:-}$BINDIR/pg_ctl -D $DATA stop"
echo "export DYNANOISE_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
