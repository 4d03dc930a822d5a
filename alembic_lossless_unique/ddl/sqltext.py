"""SQL text built safely from names and values known in Python, the way pg_dump writes it:
every identifier quoted where PostgreSQL needs it, every object schema-qualified."""

import hashlib
from collections.abc import Iterable

from sqlalchemy.dialects import postgresql

# SQLAlchemy's PostgreSQL dialect constructors carry no annotations.
_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

# PostgreSQL truncates longer identifiers silently; names are derived to fit instead.
MAX_IDENTIFIER_BYTES = 63


def ident(name: str) -> str:
    """One identifier, quoted when PostgreSQL needs it (reserved words, capitals, spaces)."""
    return _PREPARER.quote(name)


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def idents(names: Iterable[str], prefix: str = "") -> str:
    """`a, b` or, with prefix `c.`, `c.a, c.b`."""
    return ", ".join(prefix + ident(name) for name in names)


def list_items(sql: str) -> list[str]:
    """The items of a comma-separated SQL list, as CREATE INDEX reads its parentheses: a comma
    inside parentheses or quotes separates nothing (`lower(a), coalesce(b, ',')` is two)."""
    items: list[str] = []
    depth, quote, start = 0, "", 0
    for position, character in enumerate(sql):
        if quote:  # a doubled quote closes and opens again: still inside
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "()":
            depth += 1 if character == "(" else -1
        elif character == "," and depth == 0:
            items.append(sql[start:position])
            start = position + 1
    items.append(sql[start:])
    return [item.strip() for item in items if item.strip()]


def literal(value: str) -> str:
    """A string constant. Every script and session of this package runs with
    standard_conforming_strings on (PostgreSQL's default), where only quotes need doubling."""
    return "'" + value.replace("'", "''") + "'"


def literal_array(values: Iterable[str]) -> str:
    return "ARRAY[" + ", ".join(literal(value) for value in values) + "]::text[]"


def derived_name(base: str, suffix: str) -> str:
    """`base_suffix`, shortened with a hash of `base` when it would exceed PostgreSQL's limit."""
    name = f"{base}_{suffix}"
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.md5(base.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix) - len(digest) - 2
    return f"{base.encode()[:room].decode(errors='ignore')}_{digest}_{suffix}"


def dollar_quoted(body: str, tag: str) -> str:
    """`$tag$body$tag$`: a plpgsql body that may contain quotes of its own."""
    marker = f"${tag}$"
    if marker in body:
        raise ValueError(f"the body contains its own quote marker {marker}")
    return f"{marker}{body}{marker}"


def executed_when(condition: str, statement: str) -> str:
    """A DO block that runs `statement` only where the SQL boolean `condition` holds."""
    body = f"""
BEGIN
    IF NOT {condition} THEN RETURN; END IF;
    EXECUTE {literal(statement)};
END
"""
    return f"DO {dollar_quoted(body, 'gated')}"


def qualified_relation_sql(oid: str) -> str:
    """SQL for `schema.name` of a relation oid, always qualified (regclass's text output drops
    the schema of whatever the search_path makes visible)."""
    return (
        "(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c"
        f" JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = {oid})"
    )


def joined_sql(template: str, separator: str, **arrays: str) -> str:
    """SQL for the elements of parallel arrays (SQL expressions, by the names the template
    uses), each formatted by format() `template`, joined by `separator`: a column list or a
    join condition built in the database, from catalog facts it reads at run time."""
    names = ", ".join(arrays)
    sources = ", ".join(f"pg_catalog.unnest({array})" for array in arrays.values())
    return (
        f"(SELECT pg_catalog.string_agg(pg_catalog.format({literal(template)}, {names}),"
        f" {literal(separator)}) FROM ROWS FROM ({sources}) AS joined({names}))"
    )
