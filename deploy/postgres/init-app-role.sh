#!/bin/sh
# Compose's database, on its first start (the postgres image runs /docker-entrypoint-initdb.d/
# once, as POSTGRES_USER, the owner that runs the migrations): the app role the workers log in
# as, APP_DB_USER with APP_DB_PASSWORD, and what it may do (grant-app-role.sql, beside this
# file). No one else may connect to the database or create anything in its schema.
set -eu
: "${APP_DB_PASSWORD:?set APP_DB_PASSWORD in .env}"
here=${STACK_SQL_DIR:-/etc/stack/postgres}
psql_owner() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v database="$POSTGRES_DB" -v owner="$POSTGRES_USER" -v app="${APP_DB_USER:-notes_app}" \
        -v password="$APP_DB_PASSWORD" "$@"
}
psql_owner <<'SQL'
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    PASSWORD :'password';
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
psql_owner -f "$here/grant-app-role.sql"
