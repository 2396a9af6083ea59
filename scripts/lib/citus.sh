# A throwaway Citus cluster on this machine, for the Citus tests and bench: a coordinator and
# two worker nodes, each its own PostgreSQL cluster (initdb as the postgres user when run as
# root) with shared_preload_libraries = 'citus', wal_level = logical (shard moves use logical
# replication), on free local ports.
#
# citus_installed: whether the Citus extension is installed into PostgreSQL $PG_BIN.
# citus_cluster_start: starts the cluster and exports SLUICEGATE_TEST_CITUS_URL (the
# coordinator), SLUICEGATE_TEST_CITUS_DIR (= CITUS_DIR, one data directory per node:
# coordinator, worker1, worker2), CITUS_PORTS (coordinator first). Needs pg.sh sourced and
# PG_BIN set.
# citus_cluster_stop: stops and removes it. CITUS_DEFAULTS=1 (the bench) keeps PostgreSQL's own
# durability and autovacuum settings.

citus_installed() {
  [ -f "$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo /nonexistent)/citus.so" ] ||
    [ -f "$(dirname "$PG_BIN")/lib/citus.so" ]
}

citus_free_port() {
  local port
  for port in $(seq "$1" 55799); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port in $1-55799" >&2
  return 1
}

citus_cluster_start() {
  CITUS_DIR=$(mktemp -d /tmp/sluicegate-citus.XXXXXX)
  chmod 755 "$CITUS_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$CITUS_DIR"
  local tuning="fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off"
  [ "${CITUS_DEFAULTS:-0}" = 1 ] && tuning=""
  CITUS_PORTS=""
  local port=55600 node
  for node in coordinator worker1 worker2; do
    port=$(citus_free_port "$port")
    pg_as_postgres "$PG_BIN/initdb" -D "$CITUS_DIR/$node" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    echo "host all all 127.0.0.0/8 trust" >>"$CITUS_DIR/$node/pg_hba.conf"
    cat >>"$CITUS_DIR/$node/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$CITUS_DIR'
shared_preload_libraries = 'citus'
wal_level = logical
max_connections = 300
max_worker_processes = 32
citus.log_remote_commands = off
$tuning
CONF
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$CITUS_DIR/$node" -l "$CITUS_DIR/$node.log" -w -t 60 start >/dev/null ||
      { cat "$CITUS_DIR/$node.log" >&2; return 1; }
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE EXTENSION citus" >/dev/null
    CITUS_PORTS="$CITUS_PORTS $port"
    port=$((port + 1))
  done
  CITUS_PORTS=${CITUS_PORTS# }
  local coordinator=${CITUS_PORTS%% *}
  local sql="SELECT citus_set_coordinator_host('127.0.0.1', $coordinator);"
  for port in ${CITUS_PORTS#* }; do
    sql="$sql SELECT citus_add_node('127.0.0.1', $port);"
  done
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$coordinator" -U postgres -d postgres -c "$sql" >/dev/null
  export CITUS_DIR CITUS_PORTS
  # The node-stop test runs pg_ctl on $SLUICEGATE_TEST_CITUS_DIR/worker2.
  export SLUICEGATE_TEST_CITUS_DIR="$CITUS_DIR" PG_BIN
  export SLUICEGATE_TEST_CITUS_URL="postgres://postgres@127.0.0.1:$coordinator/postgres"
  echo "Citus cluster: coordinator 127.0.0.1:$coordinator, workers ${CITUS_PORTS#* } ($(psql -X -At -h 127.0.0.1 -p "$coordinator" -U postgres -d postgres -c "SELECT citus_version()" | cut -d, -f1))"
}

citus_cluster_stop() {
  [ -n "${CITUS_DIR:-}" ] || return 0
  local node
  for node in coordinator worker1 worker2; do
    [ -d "$CITUS_DIR/$node" ] && pg_as_postgres "$PG_BIN/pg_ctl" -D "$CITUS_DIR/$node" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$CITUS_DIR"
}
