# Sourced by .ci/test: PostgreSQL from Debian's packages, a private cluster on a free port.
# PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user (which
# Debian's package creates), with its data in a directory of CI_TMP that user owns.
# PG_BIN is exported for the tests that start servers of their own (fault and crash tests).
pg_find_bin() {
  PG_BIN=""
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && PG_BIN="$dir"
  done
}
pg_find_bin
if [ -z "$PG_BIN" ]; then
  echo "PostgreSQL not found: installing it from Debian's packages"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_find_bin
fi
export PG_BIN
if [ -z "${DATABASE_URL:-}" ]; then
  pg_port="$(free_port)"
  pg_dir="$CI_TMP/postgres"
  mkdir -p "$pg_dir"
  pg_as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$pg_dir"
    pg_as=(runuser -u postgres --)
  fi
  echo "starting PostgreSQL ($PG_BIN) on 127.0.0.1:$pg_port"
  "${pg_as[@]}" "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 \
    --no-sync >"$pg_dir/initdb.log" 2>&1
  # -w waits until it accepts connections; fsync off: the tests kill apps, not this server.
  "${pg_as[@]}" "$PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c max_connections=300 -c fsync=off" \
    >/dev/null
  CI_PIDS="$CI_PIDS $(head -n 1 "$pg_dir/data/postmaster.pid")"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
fi
