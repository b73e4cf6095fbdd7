# Sourced by scripts/test: makes sure PostgreSQL answers on 127.0.0.1:5432
# with a database "sluicegate" owned by the role "sluicegate" (password
# "sluicegate"), installing Debian's postgresql and starting its cluster
# when absent, reusing one that already runs. Exports the URL the tests
# use as $SLUICEGATE_TEST_POSTGRES.

postgres_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/5432") 2>/dev/null; }

ensure_postgres() {
  export SLUICEGATE_TEST_POSTGRES=postgres://sluicegate:sluicegate@127.0.0.1:5432/sluicegate
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "scripts/test: the deduplication tests need PostgreSQL (Debian: postgresql)" >&2
      return 1
    fi
    echo "PostgreSQL: installing Debian's postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  if postgres_port_open; then
    echo "PostgreSQL: already listening on 127.0.0.1:5432, reusing it"
  else
    local version cluster
    read -r version cluster _ < <(pg_lsclusters -h | head -n 1)
    if [ -z "${version:-}" ]; then
      version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
      cluster=main
      pg_createcluster "$version" "$cluster" >/dev/null
    fi
    echo "PostgreSQL: starting cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start
    local waited=0
    until postgres_port_open; do
      if [ "$waited" -ge 60 ]; then
        echo "scripts/test: PostgreSQL did not listen on 127.0.0.1:5432 within 60 s (logs: /var/log/postgresql/)" >&2
        return 1
      fi
      sleep 1
      waited=$((waited + 1))
    done
  fi
  local as_postgres=(runuser -u postgres --)
  if [ "$(id -u)" != 0 ]; then as_postgres=(); fi
  if ! "${as_postgres[@]}" psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'sluicegate'" postgres 2>/dev/null | grep -q 1; then
    "${as_postgres[@]}" psql -q -c "CREATE ROLE sluicegate LOGIN PASSWORD 'sluicegate'" postgres 2>/dev/null ||
      "${as_postgres[@]}" psql -q -h 127.0.0.1 -c "CREATE ROLE sluicegate LOGIN PASSWORD 'sluicegate'" postgres
  fi
  if ! PGPASSWORD=sluicegate psql -h 127.0.0.1 -U sluicegate -tAc 'SELECT 1' sluicegate >/dev/null 2>&1; then
    "${as_postgres[@]}" createdb -O sluicegate sluicegate 2>/dev/null ||
      "${as_postgres[@]}" createdb -h 127.0.0.1 -O sluicegate sluicegate
  fi
  PGPASSWORD=sluicegate psql -h 127.0.0.1 -U sluicegate -tAc 'SELECT version()' sluicegate | head -n 1
}
