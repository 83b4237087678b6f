-- What the app role may do in the database, whose schema `public` the owner owns: connect,
-- use the schema, select, insert, update and delete rows in its tables and use their
-- sequences, now and in whatever the owner creates later (a migration's new table needs no
-- grant of its own). Nothing else: no CREATE, no DDL, no TRUNCATE.
--
-- psql variables: database, owner, app. Run as the owner or a superuser, by
--   native mode  deploy/native/postgres.py (which fills the variables in itself)
--   Compose      deploy/postgres/init-app-role.sh, on the database's first start
--   Kubernetes   the operator, once (docs/kubernetes.md)
GRANT CONNECT ON DATABASE :"database" TO :"app";
GRANT USAGE ON SCHEMA public TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
