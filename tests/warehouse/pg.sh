#!/usr/bin/env bash
# A throwaway PostgreSQL server for the warehouse test (tests/test_warehouse.py) and for trying the warehouse
# recipe by hand. It uses the server binaries of Debian's `postgresql` package (or any initdb/pg_ctl on PATH), keeps
# its data in a folder of its own, listens on 127.0.0.1 only, on a free port, and never touches the machine's own
# cluster. Test settings (fsync off): never keep data you care about in it.
#
#   tests/warehouse/pg.sh start      # create (first time) and start; prints the export line
#   eval "$(tests/warehouse/pg.sh env)"   # WAREHOUSE_PG_URL=postgresql://loops:loops@127.0.0.1:<port>/warehouse
#   .venv/bin/python tests/warehouse/seed.py "$WAREHOUSE_PG_URL"   # the Segment-shaped tables and rows
#   tests/warehouse/pg.sh psql       # a psql session on the warehouse database
#   tests/warehouse/pg.sh stop       # stop (data kept; `start` again reuses it)
#   tests/warehouse/pg.sh destroy    # stop and delete the data folder
#   tests/warehouse/pg.sh status
#
# Environment: WAREHOUSE_PG_DIR (data folder, default ${TMPDIR:-/tmp}/target-loops-warehouse-pg),
# WAREHOUSE_PG_PORT (default: a free port), WAREHOUSE_PG_BINDIR (folder of initdb/pg_ctl).
# As root (CI), the server runs as the `postgres` user that Debian's package creates (PostgreSQL refuses root).
set -euo pipefail

PGDIR=${WAREHOUSE_PG_DIR:-${TMPDIR:-/tmp}/target-loops-warehouse-pg}
DATA=$PGDIR/data
DB_USER=loops
DB_PASSWORD=loops
DB_NAME=warehouse

die() { echo "pg.sh: $*" >&2; exit 1; }

find_bindir() {
    if [[ -n ${WAREHOUSE_PG_BINDIR:-} ]]; then
        [[ -x $WAREHOUSE_PG_BINDIR/initdb ]] || die "no initdb in WAREHOUSE_PG_BINDIR=$WAREHOUSE_PG_BINDIR"
        echo "$WAREHOUSE_PG_BINDIR"
        return
    fi
    local newest
    # Debian/Ubuntu: /usr/lib/postgresql/<major>/bin (not on PATH); take the newest major version.
    newest=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $newest && -x $newest/initdb ]]; then
        echo "$newest"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
    else
        die "PostgreSQL server binaries not found: install Debian's package (apt-get install -y postgresql) or set WAREHOUSE_PG_BINDIR"
    fi
}

# Run a server binary as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (from Debian's postgresql package)"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_is_free() {
    python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

url() {
    echo "postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$(cat "$PGDIR/port")/$DB_NAME"
}

running() {
    [[ -f $DATA/postmaster.pid ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

cmd_start() {
    mkdir -p "$PGDIR"
    [[ $(id -u) == 0 ]] && chown postgres: "$PGDIR"
    if [[ ! -f $DATA/PG_VERSION ]]; then
        local pwfile=$PGDIR/.pw
        ( umask 077; echo "$DB_PASSWORD" > "$pwfile" )
        [[ $(id -u) == 0 ]] && chown postgres: "$pwfile"
        # Password (scram) over TCP; the Unix socket lives in the data folder, which only the owner can enter.
        as_owner "$BIN/initdb" -D "$DATA" -U "$DB_USER" --pwfile="$pwfile" -E UTF8 --no-locale \
            --auth-host=scram-sha-256 --auth-local=trust >"$PGDIR/initdb.log" 2>&1 \
            || { rm -f "$pwfile"; cat "$PGDIR/initdb.log" >&2; die "initdb failed"; }
        rm -f "$pwfile"
        cat >>"$DATA/postgresql.conf" <<'CONF'
# tests/warehouse/pg.sh: a throwaway test server
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
CONF
    fi
    if running; then
        echo "pg.sh: already running on port $(cat "$PGDIR/port")" >&2
    else
        local port=${WAREHOUSE_PG_PORT:-}
        if [[ -z $port ]]; then
            port=$(cat "$PGDIR/port" 2>/dev/null || true)
            if [[ -z $port ]] || ! port_is_free "$port"; then port=$(free_port); fi
        fi
        echo "$port" > "$PGDIR/port"
        as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
            -o "-p $port -k '$DATA' -c listen_addresses=127.0.0.1" start >/dev/null \
            || { tail -n 20 "$DATA/server.log" >&2 || true; die "the server did not start (log: $DATA/server.log)"; }
        if ! as_owner "$BIN/psql" -h "$DATA" -p "$port" -U "$DB_USER" -d postgres -Atqc \
            "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
            as_owner "$BIN/psql" -h "$DATA" -p "$port" -U "$DB_USER" -d postgres -qc "CREATE DATABASE $DB_NAME" >/dev/null
        fi
    fi
    echo "export WAREHOUSE_PG_URL=$(url)"
}

cmd_stop() {
    if running; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        echo "pg.sh: stopped" >&2
    else
        echo "pg.sh: not running" >&2
    fi
}

cmd_env() {
    running || die "not running: tests/warehouse/pg.sh start"
    echo "export WAREHOUSE_PG_URL=$(url)"
}

cmd_status() {
    if running; then echo "running: $(url)"; else echo "stopped ($PGDIR)"; return 3; fi
}

cmd_psql() {
    running || die "not running: tests/warehouse/pg.sh start"
    PGPASSWORD=$DB_PASSWORD exec "$BIN/psql" -h 127.0.0.1 -p "$(cat "$PGDIR/port")" -U "$DB_USER" -d "$DB_NAME" "$@"
}

BIN=$(find_bindir)
case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    psql) shift; cmd_psql "$@" ;;
    destroy) cmd_stop; rm -rf "$PGDIR"; echo "pg.sh: removed $PGDIR" >&2 ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
