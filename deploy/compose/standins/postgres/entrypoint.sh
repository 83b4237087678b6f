#!/bin/sh
# The stand-in PostgreSQL's entrypoint (Dockerfile beside it): what docker-compose.yml relies on
# of the official postgres image's, and nothing more.
#
#   first start (PGDATA empty): initdb with POSTGRES_USER as the superuser whose password is
#     POSTGRES_PASSWORD, POSTGRES_DB made and owned by it, then each file of
#     /docker-entrypoint-initdb.d run once in name order (*.sh executed, or sourced when not
#     executable; *.sql through psql) while the server listens on its unix socket only;
#   every start: the command (postgres) as PID 1, listening on every address, scram-sha-256
#     for every TCP login, trust on the container's own socket, as the official image does.
set -eu

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

psql_owner() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?the first start needs POSTGRES_PASSWORD}"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$POSTGRES_USER" --pwfile="$password_file" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql_owner --dbname postgres -v database="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"database";
SQL
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case "$file" in
            *.sh)
                echo "entrypoint: running $file"
                if [ -x "$file" ]; then "$file"; else . "$file"; fi
                ;;
            *.sql)
                echo "entrypoint: running $file"
                psql_owner --dbname "$POSTGRES_DB" -f "$file"
                ;;
            *) ;;
        esac
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    echo "entrypoint: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
