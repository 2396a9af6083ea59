# Shared by scripts/test and scripts/soak: a throwaway PostgreSQL cluster.
#
# pg_throwaway_start: installs PostgreSQL when its binaries are missing, initdb's a cluster in a
# temporary directory (as the postgres user when run as root), starts it on a free local port
# and exports SLUICEGATE_TEST_PG_URL, PG_BIN, PG_DIR, PG_PORT. The cluster is stopped and
# removed on exit. pg_throwaway_restart restarts it (fast mode: sessions are cut). PG_LISTEN
# (default 127.0.0.1) lists the loopback addresses it listens on.

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

pg_throwaway_launch() {
  pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 -m fast "$1" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=${PG_LISTEN:-127.0.0.1} -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB -c shared_preload_libraries=pg_stat_statements" >/dev/null
}

pg_throwaway_restart() {
  pg_throwaway_launch restart
}

pg_throwaway_stop() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
