"""Equality the way the unique index will judge it, whatever the column types.

The migrator's search_path holds only pg_catalog (see session.py), so `a = b` on a type from an
extension (citext, say) would not find the extension's operator, and could silently fall back to
another one through a cast (text = text: case-sensitive where the index is not). Every statement
that compares user columns therefore names its operator: the equality member of the column
type's default btree operator class, which is what a unique btree index on the column uses.

Statements are written in Python with a placeholder per compared column and filled in, in the
database, by format(): the same text serves the online path and the offline script.
"""

from collections.abc import Iterable, Mapping

from alembic_lossless_unique.ddl.sqltext import ident, literal, literal_array

_OPERATORS = """ARRAY(
    SELECT coalesce(wanted.known, (
        SELECT pg_catalog.format('OPERATOR(%I.%s)', opn.nspname, o.oprname)
          FROM pg_catalog.pg_opclass oc
          JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod AND am.amname = 'btree'
          JOIN pg_catalog.pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopstrategy = 3
               AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
          JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr
          JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace
         WHERE oc.opcdefault
           AND oc.opcintype = coalesce(NULLIF(t.typbasetype, 0), t.oid)
         LIMIT 1), 'OPERATOR(pg_catalog.=)')
      FROM ROWS FROM (pg_catalog.unnest({columns}), pg_catalog.unnest({known}))
           WITH ORDINALITY AS wanted(name, known, position)
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = {relation} AND a.attname = wanted.name
                                         AND wanted.known IS NULL
      LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     ORDER BY wanted.position)"""


def operators_sql(columns: str, relation: str, known: str = "ARRAY[]::text[]") -> str:
    """A text[] expression: the qualified equality operator of each column named in `columns`
    (a text[] expression) of `relation` (a regclass or oid expression), in order; where the
    parallel text[] `known` has one (a key element's, read from its index), that one."""
    return _OPERATORS.format(columns=columns, relation=relation, known=known)


class Comparisons:
    """Placeholders for the equality operators of the columns a statement compares."""

    def __init__(self, columns: Iterable[str], known: Mapping[str, str] | None = None) -> None:
        self.columns = list(dict.fromkeys(columns))
        # Operators already known (a key element's, from its index), by column.
        self.known = dict(known or {})

    def eq(self, column: str) -> str:
        """The operator placeholder (`%3$s`): format() puts the real one there."""
        return f"%{self.columns.index(column) + 1}$s"

    def equal(
        self,
        left: str,
        right: str,
        columns: Iterable[str],
        renamed: Mapping[str, str] | None = None,
    ) -> str:
        """`left.a = right.a AND ...` with the right operators; `renamed` maps a column to its
        name on the right side when it differs."""
        renamed = renamed or {}
        return " AND ".join(
            f"{left}.{fmt_ident(c)} {self.eq(c)} {right}.{fmt_ident(renamed.get(c, c))}"
            for c in columns
        )

    def same(self, left: str, right: str, columns: Iterable[str]) -> str:
        """Equal, or both NULL (IS NOT DISTINCT FROM, with the right operators)."""
        return " AND ".join(
            f"({left}.{fmt_ident(c)} {self.eq(c)} {right}.{fmt_ident(c)}"
            f" OR ({left}.{fmt_ident(c)} IS NULL AND {right}.{fmt_ident(c)} IS NULL))"
            for c in columns
        )

    def operators_sql(self, relation: str) -> str:
        """A text[] expression: the operators, looked up for `relation` (a regclass expr)."""
        if not self.known:
            return operators_sql(literal_array(self.columns), relation)
        known = ", ".join(
            literal(self.known[c]) if c in self.known else "NULL" for c in self.columns
        )
        return operators_sql(literal_array(self.columns), relation, f"ARRAY[{known}]::text[]")

    @property
    def count(self) -> int:
        return len(self.columns)


def escape_format(text: str) -> str:
    """Text that format() must leave as it is (a name may contain %)."""
    return text.replace("%", "%%")


def fmt_ident(name: str) -> str:
    """An identifier inside a format() template."""
    return escape_format(ident(name))


def fmt_idents(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(prefix + fmt_ident(name) for name in names)


def regclass(qualified_name: str) -> str:
    return f"{literal(qualified_name)}::pg_catalog.regclass"
