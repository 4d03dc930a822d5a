"""The index form's key in the offline script, where no connection reads it beforehand.

Online, probe.py reads the key from PostgreSQL before any statement is written. Offline the
script does the same at run time: a DO block (probe_sql) runs probe.py's probe on a temporary
copy of the table and keeps what it read (each element's value, operator and printed form; the
predicate; the shape) as a text[] in a setting of the transaction. Every statement is written
by the same ddl modules as online, from the same UniqueKey, whose parts are markers (`pending`);
`filled` turns a statement holding markers into a DO block that puts the parts read at run time
in their place (format()) and executes it. So there is one idea of the key, the probe's.

A marker carries a quote and a percent sign: wherever the ddl modules quote the part (a string
constant, maybe inside another: each doubles the quotes) or escape it for format() (doubling
the percent signs), the marker shows it, and the part's own quotes and percent signs are
multiplied alike when it is put in.
"""

import re
from dataclasses import replace
from types import SimpleNamespace

from alembic_lossless_unique.ddl import checks, dedupe, probe
from alembic_lossless_unique.ddl.comparisons import escape_format
from alembic_lossless_unique.ddl.sqltext import dollar_quoted, literal
from alembic_lossless_unique.operations.target import UniqueTarget

KEY_SETTING = "alembic_lossless_unique.offline_key"

# The parts of the key, in the setting's order: per element (value, operator, printed), then
# the predicate and the shape.
_PER_ELEMENT = ("value", "operator", "printed")
_MARKER = re.compile(r"\x01(\d+)('+)(%+)\x01")


def _marker(part: int) -> str:
    """The place of part `part` (1-based) in a statement: no SQL contains \\x01."""
    return f"\x01{part}'%\x01"


def pending(target: UniqueTarget) -> UniqueTarget:
    """The index form's target, its key's parts markers that `filled` replaces at run time."""
    count = len(target.index_elements)
    elements = [
        SimpleNamespace(
            n=n,
            **{
                name: _marker(len(_PER_ELEMENT) * (n - 1) + at)
                for at, name in enumerate(_PER_ELEMENT, 1)
            },
        )
        for n in range(1, count + 1)
    ]
    predicate = _marker(len(_PER_ELEMENT) * count + 1) if target.where is not None else None
    # The key's columns are checked by the probe itself (an unknown one fails it): none named.
    index = SimpleNamespace(
        predicate=predicate, referenced=(), shape=_marker(len(_PER_ELEMENT) * count + 2)
    )
    return replace(target, probed_key=probe.key_from(target, elements, index))


def probe_sql(target: UniqueTarget) -> str:
    """A DO block: the probe, its parts kept for the statements after it in the transaction;
    where PostgreSQL will not build the index, a refusal as online, before anything changed."""
    creates = "".join(f"\n        EXECUTE {literal(s)};" for s in probe.probe_statements(target))
    option = checks.option_problem_sql(target)
    refuse_option = (
        f"""
    problem := {option};
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)}, MESSAGE = problem;
    END IF;"""
        if option is not None
        else ""
    )
    unbuildable = escape_format(probe.unbuildable(target, "\x02")).replace("\x02", "%s")
    names = ", ".join(f"element.{name}" for name in _PER_ELEMENT)
    # The script was written for one key column per entry of `columns`; online reads any count.
    count = len(target.index_elements)
    miscounted = escape_format(
        f"{target.kind} {target.constraint_name} on {target.key_description}: its key has"
        "\x02 columns where `columns` gives"
        f" {count}: the offline script needs each key column as an entry of its own"
        " (run `alembic upgrade` without --sql, or split the SQL); nothing was changed"
    ).replace("\x02", " %s")
    body = f"""
DECLARE
    parts text[] := ARRAY[]::text[];
    element record;
    found record;
    problem text;
BEGIN{refuse_option}
    BEGIN{creates}
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)},
            MESSAGE = pg_catalog.format({literal(unbuildable)}, SQLERRM);
    END;
    FOR element IN {probe.elements_sql()} LOOP
        parts := parts || ARRAY[{names}];
    END LOOP;
    IF pg_catalog.cardinality(parts) <> {len(_PER_ELEMENT) * count} THEN
        RAISE EXCEPTION USING ERRCODE = {literal(dedupe.REFUSED)},
            MESSAGE = pg_catalog.format({literal(miscounted)},
                                        pg_catalog.cardinality(parts) / {len(_PER_ELEMENT)});
    END IF;
    SELECT * INTO found FROM ({probe.index_sql()}) AS i;
    parts := parts || ARRAY[found.predicate, found.shape];
    DROP TABLE pg_temp.{probe.PROBE_TABLE};
    PERFORM pg_catalog.set_config({literal(KEY_SETTING)}, parts::text, true);
END
"""
    return f"DO {dollar_quoted(body, 'probe')}"


def filled(statement: str) -> str:
    """`statement`, or where it holds markers, a DO block that executes it with the key's
    parts the probe read in their places."""
    places = list(dict.fromkeys(m.group(0) for m in _MARKER.finditer(statement)))
    if not places:
        return statement
    template = escape_format(statement)
    parts = []
    for n, place in enumerate(places, 1):
        template = template.replace(escape_format(place), f"%{n}${'s'}")
        match = _MARKER.fullmatch(place)
        assert match is not None
        part, quotes, percents = match.groups()
        parts.append(
            f"pg_catalog.replace(pg_catalog.replace(parts[{part}], '%', {literal(percents)}),"
            f" '''', {literal(quotes)})"
        )
    if "\x01" in template:
        raise ValueError(f"a key marker out of place in: {statement[:200]}")
    body = f"""
DECLARE
    parts text[];
BEGIN
    -- None where the probe did not run (the revision is not due): nothing reads them then.
    parts := coalesce(pg_catalog.current_setting({literal(KEY_SETTING)}, true), '{{}}')::text[];
    EXECUTE pg_catalog.format({literal(template)},
                              VARIADIC ARRAY[{", ".join(parts)}]::text[]);
END
"""
    return f"DO {dollar_quoted(body, 'key_filled')}"
