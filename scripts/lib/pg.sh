# Shared by scripts/test and scripts/soak: a throwaway PostgreSQL cluster.
#
# pg_throwaway_start: installs PostgreSQL when its binaries are missing, initdb's a cluster in a
# temporary directory (as the postgres user when run as root), starts it on a free local port
# and exports SLUICEGATE_TEST_PG_URL, PG_BIN, PG_DIR, PG_PORT. The cluster is stopped and
# removed on exit. pg_throwaway_restart restarts it (fast mode: sessions are cut). PG_LISTEN
# (default 127.0.0.1) lists the loopback addresses it listens on.
#
# pg_health_clusters_start: a second cluster for the health-indicator tests, with WAL archiving
# whose archive_command fails while $HEALTH_DIR/archive_ok is missing, autovacuum waking every
# second, and a streaming replica (pg_basebackup -R). Exports SLUICEGATE_TEST_HEALTH_PG_URL,
# SLUICEGATE_TEST_REPLICA_URL and SLUICEGATE_TEST_ARCHIVE_SWITCH (the file to remove/create).

PG_VERSION=${PG_VERSION:-15}

pg_find_bin() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

pg_free_port() {
  local port
  for port in $(seq "${SLUICEGATE_TEST_PG_PORT:-54329}" 54429); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port in 54329-54429" >&2
  return 1
}

pg_as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_throwaway_start() {
  PG_BIN=$(pg_find_bin || true)
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "PostgreSQL binaries not found; installing postgresql-$PG_VERSION" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "postgresql-$PG_VERSION" || apt-get install -y -qq postgresql
    PG_BIN=$(pg_find_bin)
  fi
  PG_PORT=$(pg_free_port)
  PG_DIR=$(mktemp -d /tmp/sluicegate-pg.XXXXXX)
  chmod 755 "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PG_DIR" postgres
    chown postgres "$PG_DIR"
  fi
  trap pg_throwaway_stop EXIT
  pg_as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  # Loopback only, but all of 127.0.0.0/8: the soak's test hosts (network namespaces) use it.
  echo "host all all 127.0.0.0/8 trust" >>"$PG_DIR/data/pg_hba.conf"
  pg_throwaway_launch start
  export PG_BIN PG_DIR PG_PORT
  export SLUICEGATE_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  # This cluster has pg_stat_statements: the tests that count statements require it.
  export SLUICEGATE_TEST_PG_STATEMENTS=1
  echo "throwaway PostgreSQL cluster on 127.0.0.1:$PG_PORT ($("$PG_BIN/postgres" --version))"
}

# For tests, autovacuum is off and durability traded for speed: a vacuum of a test's table
# would start at a random moment (the health cluster below tests autovacuum on purpose).
# PG_DEFAULTS=1 (the benchmark) keeps PostgreSQL's own defaults instead: autovacuum on,
# fsync on, default shared_buffers, as users run it.
pg_throwaway_launch() {
  local tuning="-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB -c autovacuum=off"
  [ "${PG_DEFAULTS:-0}" = 1 ] && tuning=""
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 -m fast "$1" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=${PG_LISTEN:-127.0.0.1} -c max_connections=400 -c shared_preload_libraries=pg_stat_statements $tuning" >/dev/null
}

pg_health_clusters_start() {
  HEALTH_DIR=$(mktemp -d /tmp/sluicegate-health.XXXXXX)
  chmod 755 "$HEALTH_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$HEALTH_DIR"
  local primary_port replica_port
  primary_port=$(SLUICEGATE_TEST_PG_PORT=54380 pg_free_port)
  pg_as_postgres mkdir -p "$HEALTH_DIR/archive"
  pg_as_postgres "$PG_BIN/initdb" -D "$HEALTH_DIR/primary" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  echo "host all all 127.0.0.0/8 trust" >>"$HEALTH_DIR/primary/pg_hba.conf"
  echo "host replication all 127.0.0.0/8 trust" >>"$HEALTH_DIR/primary/pg_hba.conf"
  cat >>"$HEALTH_DIR/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $primary_port
unix_socket_directories = '$HEALTH_DIR'
fsync = off
full_page_writes = off
max_connections = 200
archive_mode = on
archive_command = 'test -f $HEALTH_DIR/archive_ok && cp %p $HEALTH_DIR/archive/%f'
autovacuum_naptime = 1s
max_wal_senders = 5
CONF
  pg_as_postgres touch "$HEALTH_DIR/archive_ok"
  chmod 666 "$HEALTH_DIR/archive_ok"
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$HEALTH_DIR/primary" -l "$HEALTH_DIR/primary.log" -w -t 60 start >/dev/null
  replica_port=$(SLUICEGATE_TEST_PG_PORT=$((primary_port + 1)) pg_free_port)
  pg_as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres \
    -D "$HEALTH_DIR/replica" -R -X stream >/dev/null
  cat >>"$HEALTH_DIR/replica/postgresql.conf" <<CONF
port = $replica_port
cluster_name = 'sg_replica'
archive_mode = off
CONF
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$HEALTH_DIR/replica" -l "$HEALTH_DIR/replica.log" -w -t 60 start >/dev/null
  export SLUICEGATE_TEST_HEALTH_PG_URL="postgres://postgres@127.0.0.1:$primary_port/postgres"
  export SLUICEGATE_TEST_REPLICA_URL="postgres://postgres@127.0.0.1:$replica_port/postgres"
  export SLUICEGATE_TEST_ARCHIVE_SWITCH="$HEALTH_DIR/archive_ok"
  echo "health clusters: primary 127.0.0.1:$primary_port (archiving), replica 127.0.0.1:$replica_port"
}

pg_health_clusters_stop() {
  if [ -n "${HEALTH_DIR:-}" ] && [ -d "$HEALTH_DIR" ]; then
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$HEALTH_DIR/replica" -m immediate stop >/dev/null 2>&1 || true
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$HEALTH_DIR/primary" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$HEALTH_DIR"
  fi
}

pg_throwaway_restart() {
  pg_throwaway_launch restart
}

pg_throwaway_stop() {
  pg_health_clusters_stop
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
