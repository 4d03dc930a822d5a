"""DATABASE_URL in, a psycopg2 URL out, or a one-line message saying what to fix.

Shared by the env.py hook and the preflight report, so both read the same variable the same way.
libpq itself parses the URL (PQconninfoParse), so every value means what it means to psql.
"""

import os
import re
from collections.abc import Mapping

import psycopg2
from psycopg2.extensions import parse_dsn
from sqlalchemy.engine import URL

EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DB"

# Everything up to "://"; a password can only come after it, so the scheme is safe to quote.
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
NOT_A_URL = f"DATABASE_URL is not a valid URL: expected {EXAMPLE}"
PERCENT_ENCODE = (
    "percent-encode any @ / ? # : or % in the user name or password"
    f" (@ is %40, / is %2F, ? is %3F, # is %23, : is %3A, % is %25): {EXAMPLE}"
)
# A password that short is a common substring ("p" in "port"): masking it would garble the
# message, and a correctly parsed URL never puts the password where libpq would echo it.
SHORTEST_MASKED_PASSWORD = 6


class DatabaseUrlError(Exception):
    """DATABASE_URL is missing or unusable; the message is one line and carries no password."""


def _unusable(problem: str) -> DatabaseUrlError:
    return DatabaseUrlError(f"DATABASE_URL is not a valid URL: {problem}; {PERCENT_ENCODE}")


def database_url(environ: Mapping[str, str] = os.environ) -> URL:
    raw = environ.get("DATABASE_URL", "").strip()
    if not raw:
        raise DatabaseUrlError(f"DATABASE_URL is not set: export DATABASE_URL={EXAMPLE}")
    scheme = SCHEME.match(raw)
    if scheme:
        backend = scheme.group(1).split("+")[0].lower()
        if backend not in ("postgres", "postgresql"):  # Supabase and Heroku say postgres://
            raise DatabaseUrlError(
                f"DATABASE_URL names a {backend!r} database; this package migrates"
                f" PostgreSQL: {EXAMPLE}"
            )
        rest = raw[scheme.end() :]
        # libpq ends the user:password@ part at the first "/" only, and stops at the first "@";
        # URL parsers end it at "/", "?" or "#" too. Where the two disagree, an unencoded
        # character has split the password into the host, port, database or query, and libpq
        # would send those fragments to DNS and the server, and echo them in its errors.
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if authority.count("@") > 1 or "@" in rest[len(authority) :]:
            raise _unusable("its password or user name seems to hold an unencoded @ / ? or #")
        # The app may name an async or other driver; migrations always run on psycopg2.
        dsn = "postgresql://" + rest
    else:
        dsn = raw  # libpq's other form: host=... user=... password='...'
    try:
        parts = parse_dsn(dsn)
    except psycopg2.Error:
        # libpq's message quotes the offending text, which may be part of the password.
        if scheme:
            raise _unusable("libpq cannot parse it (check the query parameters)") from None
        raise DatabaseUrlError(NOT_A_URL) from None
    return _psycopg2_url(parts)


def _psycopg2_url(parts: dict[str, str]) -> URL:
    """libpq's parsed keywords as a SQLAlchemy URL; the keywords it has no field for go in the
    query, which the psycopg2 dialect hands back to libpq as they are."""
    hosts = parts.pop("host", "").split(",")  # libpq tries several hosts in turn
    ports = parts.pop("port", "").split(",")
    if any("@" in host for host in hosts):
        raise _unusable("its host name holds an @")
    if not all(re.fullmatch(r"[0-9]*", port) for port in ports):
        raise _unusable("its port is not a number")
    if len(ports) == 1:  # libpq: one port applies to every host
        ports *= len(hosts)
    if len(ports) != len(hosts):
        raise DatabaseUrlError(
            f"DATABASE_URL is not a valid URL: it names {len(hosts)} hosts"
            f" but {len(ports)} ports: {EXAMPLE}"
        )
    host, port = None, None
    if len(hosts) == 1:
        host, port = hosts[0] or None, int(ports[0]) if ports[0] else None
    else:  # the form the psycopg2 dialect passes through: host=h1,h2&port=p1,p2
        parts["host"] = ",".join(hosts)
        if any(ports):
            parts["port"] = ",".join(ports)
    return URL.create(
        "postgresql+psycopg2",
        username=parts.pop("user", None),
        password=parts.pop("password", None),
        host=host,
        port=port,
        database=parts.pop("dbname", None),
        query=parts,
    )


def one_line(error: Exception, url: URL | None) -> str:
    """The server's or driver's message, first line only, with the password masked where it is
    whole."""
    text = str(getattr(error, "orig", None) or error)
    message = next(iter(text.strip().splitlines()), "")
    password = str(url.password) if url is not None and url.password else ""
    if len(password) >= SHORTEST_MASKED_PASSWORD:
        message = message.replace(password, "***")
    return message
