"""The private schema: where archived rows, ledgers, the guard and the version table live.

It is used only when the migrating role owns it and everything in it, or creates it now: a
schema someone else created first (a squatter) could hold a trigger that runs as the migrator,
or read the archived rows. Everything in it is closed to every other role, whatever default
privileges the database grants (Supabase grants new tables to anon and authenticated).
"""

from typing import cast

from sqlalchemy.exc import IntegrityError

from alembic_lossless_unique.ddl.sqltext import dollar_quoted, ident, literal
from alembic_lossless_unique.runtime.database import Database
from alembic_lossless_unique.runtime.errors import MigrationAbort

# Why the schema {schema} (an SQL text expression) cannot be used, as one line; NULL when it
# can. Read-only.
_PROBLEM = """(
SELECT CASE
    WHEN n.oid IS NULL AND NOT pg_catalog.has_database_privilege(
             pg_catalog.current_database(), 'CREATE')
        THEN pg_catalog.format('role %s may not create schema %s in database %s:'
                               ' GRANT CREATE ON DATABASE %s TO %s, or create the schema'
                               ' as that role first', current_user, {schema},
                               pg_catalog.current_database(), pg_catalog.current_database(),
                               current_user)
    WHEN n.oid IS NULL THEN NULL
    WHEN NOT {owns_schema}
        THEN pg_catalog.format('schema %s is owned by %s, not by the migrating role %s: the'
                               ' package keeps archived rows there and uses it only when it'
                               ' owns it; drop it or ALTER SCHEMA %s OWNER TO %s, then re-run',
                               {schema}, pg_catalog.pg_get_userbyid(n.nspowner), current_user,
                               {schema}, current_user)
    ELSE (SELECT pg_catalog.format('schema %s holds %s owned by %s, not by the migrating role'
                                   ' %s: remove it, then re-run', {schema}, foreign_object.what,
                                   pg_catalog.pg_get_userbyid(foreign_object.owner), current_user)
            FROM (SELECT 'table ' || relname AS what, relowner AS owner
                    FROM pg_catalog.pg_class WHERE relnamespace = n.oid
                  UNION ALL
                  SELECT 'function ' || proname, proowner
                    FROM pg_catalog.pg_proc WHERE pronamespace = n.oid
                  UNION ALL
                  SELECT 'type ' || typname, typowner
                    FROM pg_catalog.pg_type WHERE typnamespace = n.oid) AS foreign_object
           WHERE NOT {owns_object}
           LIMIT 1)
    END
  FROM (SELECT 1) AS one
  LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = {schema})"""


# Whether the migrating role is `owner`, or a member of it that acts with its privileges. Not
# membership for a superuser: PostgreSQL counts a superuser as a member of every role, squatters'
# included.
_ACTS_AS = """(SELECT ({owner} = r.oid) OR (NOT r.rolsuper AND pg_catalog.pg_has_role(
                      r.oid, {owner}, 'USAGE'))
                 FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)"""


def problem_sql(schema: str) -> str:
    """The check as an SQL text expression, for the plpgsql checks; `schema` is SQL too."""
    return _PROBLEM.format(
        schema=schema,
        owns_schema=_ACTS_AS.format(owner="n.nspowner"),
        owns_object=_ACTS_AS.format(owner="foreign_object.owner"),
    )


def problem(db: Database, schema: str) -> str | None:
    return cast("str | None", db.scalar("SELECT " + problem_sql(":schema"), {"schema": schema}))


def require_usable(db: Database, schema: str) -> None:
    found = problem(db, schema)
    if found:
        raise MigrationAbort(found)


def ensure(db: Database, schema: str) -> None:
    """Create the schema if missing, then check it is ours (a concurrent squatter makes
    IF NOT EXISTS succeed silently) and close it and its contents to every other role."""
    try:
        with db.transaction():
            db.execute(create_sql(schema))
            require_usable(db, schema)
            db.execute(lock_down_sql(schema))
    except IntegrityError:
        # Another role created it between our check and our CREATE (IF NOT EXISTS does not
        # cover a concurrent commit): the same refusal, naming its owner.
        require_usable(db, schema)
        raise


def lock_down_sql(schema: str) -> str:
    """Revoke every privilege any other role holds on the schema and everything in it, including
    PUBLIC's implicit EXECUTE on functions and grants made by default privileges. Idempotent;
    shared by the online path and the offline script."""
    body = f"""
DECLARE
    schema_name constant text := {literal(schema)};
    granted record;
BEGIN
    FOR granted IN
        SELECT DISTINCT 'SCHEMA' AS kind, pg_catalog.quote_ident(n.nspname) AS object,
               acl.grantee
          FROM pg_catalog.pg_namespace n,
               pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)))
                   AS acl
         WHERE n.nspname = schema_name AND acl.grantee <> n.nspowner
        UNION
        SELECT DISTINCT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
               pg_catalog.format('%I.%I', schema_name, c.relname), acl.grantee
          FROM pg_catalog.pg_class c,
               pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault(
                   CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) AS acl
         WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace
                                  WHERE nspname = schema_name)
           AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f') AND acl.grantee <> c.relowner
        UNION
        SELECT DISTINCT 'FUNCTION', p.oid::pg_catalog.regprocedure::text, acl.grantee
          FROM pg_catalog.pg_proc p,
               pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner)))
                   AS acl
         WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace
                                  WHERE nspname = schema_name)
           AND acl.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s', granted.kind, granted.object,
            CASE WHEN granted.grantee = 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(granted.grantee)) END);
    END LOOP;
END
"""
    return f"DO {dollar_quoted(body, 'lock_down')}"


# Marks a schema this package created, so that it goes again once the downgrade empties it; a
# schema the user made is never dropped.
CREATED_COMMENT = "created by alembic_lossless_unique: dropped once it is empty again"


def create_sql(schema: str) -> str:
    body = f"""
BEGIN
    IF pg_catalog.to_regnamespace({literal(schema)}) IS NULL THEN
        CREATE SCHEMA {ident(schema)};
        COMMENT ON SCHEMA {ident(schema)} IS {literal(CREATED_COMMENT)};
    END IF;
END
"""
    return f"DO {dollar_quoted(body, 'create_schema')}"


def drop_if_created_and_empty_plpgsql(schema: str) -> str:
    """A plpgsql statement: drop the schema if this package created it and it is empty now."""
    found = f"pg_catalog.to_regnamespace({literal(schema)})"
    return f"""IF {found} IS NOT NULL
       AND pg_catalog.obj_description({found}, 'pg_namespace') = {literal(CREATED_COMMENT)}
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = {found})
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = {found})
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typnamespace = {found}) THEN
        DROP SCHEMA {ident(schema)};
    END IF;"""
