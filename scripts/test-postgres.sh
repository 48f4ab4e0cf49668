# Sourced by scripts/test.sh: when no DISTILL_TEST_POSTGRES_URL is given and a local Postgres
# server is installed (Debian: apt-get install postgresql), start a throwaway cluster for the
# tests of `distill serve --db postgres://...` and stop it on exit. Without one, those tests say
# they did not run; nothing fails.
start_test_postgres() {
  [[ -n "${DISTILL_TEST_POSTGRES_URL:-}" ]] && return 0
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x "$bin/initdb" ]] || { echo "note: no local Postgres; the Postgres variant of the serve tests is skipped" >&2; return 0; }
  local dir as=()
  dir=$(mktemp -d /tmp/distill-pg.XXXXXX)
  if [[ $(id -u) == 0 ]]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  local port=$((20000 + RANDOM % 20000))
  if "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U distill >"$dir/init.log" 2>&1 &&
     "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" -l "$dir/log" -w start >/dev/null &&
     "${as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U distill distill_test; then
    export DISTILL_TEST_POSTGRES_URL="postgres://distill@127.0.0.1:$port/distill_test"
    # shellcheck disable=SC2064
    trap "${as[*]} $bin/pg_ctl -D $dir/data -m fast stop >/dev/null 2>&1; rm -rf $dir" EXIT
  else
    echo "note: could not start a throwaway Postgres (see $dir); the Postgres variant is skipped" >&2
  fi
}
start_test_postgres
