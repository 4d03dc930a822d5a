"""DATABASE_URL in, a SQLAlchemy URL out, or a one-line message saying what to fix.

Shared by the env.py hook and the preflight report, so both read the same variable the same way.
The URL is read by libpq's rules (the URI form and the `key=value` form, as in PostgreSQL's
documentation of connection strings), here rather than by a driver, so that every value means
what it means to psql whatever driver runs the migration, and so that no part of the password is
ever quoted back: where libpq would split a password in the wrong place, the URL is refused.
"""

import os
import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from sqlalchemy.engine import URL

from alembic_lossless_unique.runtime import drivers

EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DB"

# Everything up to "://"; a password can only come after it, so the scheme is safe to quote.
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_+.-]*)://")
NOT_A_URL = f"DATABASE_URL is not a valid URL: expected {EXAMPLE}"
PERCENT_ENCODE = (
    "percent-encode any @ / ? # : or % in the user name or password"
    f" (@ is %40, / is %2F, ? is %3F, # is %23, : is %3A, % is %25): {EXAMPLE}"
)
# A password that short is a common substring ("p" in "port"): masking it would garble the
# message, and a correctly parsed URL never puts the password where a driver would echo it.
SHORTEST_MASKED_PASSWORD = 6

# The connection keywords libpq knows (PostgreSQL 18); any other is an error, as in libpq.
LIBPQ_KEYWORDS = frozenset(
    (
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslkeylogfile",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "min_protocol_version",
        "max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
        "scram_client_key",
        "scram_server_key",
        "oauth_issuer",
        "oauth_client_id",
        "oauth_client_secret",
        "oauth_scope",
    )
)


class DatabaseUrlError(Exception):
    """DATABASE_URL is missing or unusable; the message is one line and carries no password."""


def _unusable(problem: str) -> DatabaseUrlError:
    return DatabaseUrlError(f"DATABASE_URL is not a valid URL: {problem}; {PERCENT_ENCODE}")


def database_url(environ: Mapping[str, str] = os.environ) -> URL:
    raw = environ.get("DATABASE_URL", "").strip()
    if not raw:
        raise DatabaseUrlError(f"DATABASE_URL is not set: export DATABASE_URL={EXAMPLE}")
    try:
        return _parsed(raw)
    except drivers.DriverMissing as missing:
        raise DatabaseUrlError(str(missing)) from None


def _parsed(raw: str) -> URL:
    scheme = SCHEME.match(raw)
    if not scheme:  # libpq's other form: host=... user=... password='...'
        return _as_url(_keyword_values(raw), drivers.default_driver())
    backend, _, driver = scheme.group(1).lower().partition("+")
    if backend not in ("postgres", "postgresql"):  # Supabase and Heroku say postgres://
        raise DatabaseUrlError(
            f"DATABASE_URL names a {backend!r} database; this package migrates"
            f" PostgreSQL: {EXAMPLE}"
        )
    parts = _uri(raw[scheme.end() :])
    if driver:
        drivers.require(driver)
    return _as_url(parts, driver or drivers.default_driver())


def _uri(rest: str) -> dict[str, str]:
    """libpq's reading of a URI after `scheme://`: [user[:password]@][host][:port][,...]
    [/dbname][?keyword=value&...], each part percent-decoded."""
    # libpq ends the user:password@ part at the first "/" only, and stops at the first "@";
    # URL parsers end it at "/", "?" or "#" too. Where the two disagree, an unencoded character
    # has split the password into the host, port, database or query, and libpq would send those
    # fragments to DNS and the server, and echo them in its errors.
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if authority.count("@") > 1 or "@" in rest[len(authority) :]:
        raise _unusable("its password or user name seems to hold an unencoded @ / ? or #")
    parts: dict[str, str] = {}
    credentials, at, rest = rest.partition("@") if "@" in authority else ("", "", rest)
    if at:
        user, colon, password = credentials.partition(":")  # libpq: the first ":" splits
        if user:
            parts["user"] = _decoded(user)
        if colon and password:
            parts["password"] = _decoded(password)
    hosts, ports = [], []
    while True:
        if rest.startswith("["):  # an IPv6 address
            end = rest.find("]")
            if end < 0:
                raise _unusable("an IPv6 host has no closing ]")
            host, rest = rest[1:end], rest[end + 1 :]
            if not host or (rest and rest[0] not in ":/?,"):
                raise _unusable("an IPv6 host is empty or followed by something unexpected")
        else:
            host, rest = _until(rest, ":/?,")
        port = ""
        if rest.startswith(":"):
            port, rest = _until(rest[1:], "/?,")
        hosts.append(_decoded(host))
        ports.append(_decoded(port))
        if not rest.startswith(","):
            break
        rest = rest[1:]
    if any(hosts):
        parts["host"] = ",".join(hosts)
    if any(ports):
        parts["port"] = ",".join(ports)
    if rest.startswith("/"):
        dbname, rest = _until(rest[1:], "?")
        if dbname:
            parts["dbname"] = _decoded(dbname)
    if rest.startswith("?"):
        for parameter in rest[1:].split("&"):
            keyword, equals, value = parameter.partition("=")
            if not equals or "=" in value:
                raise _unusable("a query parameter is not keyword=value")
            keyword, value = _decoded(keyword), _decoded(value)
            if keyword == "ssl" and value == "true":  # as libpq reads JDBC's spelling
                keyword, value = "sslmode", "require"
            parts[_known(keyword)] = value
    return parts


def _until(text: str, stops: str) -> tuple[str, str]:
    for position, character in enumerate(text):
        if character in stops:
            return text[:position], text[position:]
    return text, ""


def _decoded(text: str) -> str:
    """Percent-decoding as libpq does it: a % not followed by two hex digits, or %00, is an
    error (and never quoted: it may be in the password)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})|%00", text):
        raise _unusable("it holds a % that is not followed by two hex digits")
    try:
        return unquote_to_bytes(text).decode()
    except UnicodeDecodeError:
        raise _unusable("a percent-encoded part is not UTF-8") from None


def _known(keyword: str) -> str:
    if keyword not in LIBPQ_KEYWORDS:
        raise _unusable("it holds a query parameter that is not a libpq connection keyword")
    return keyword


_KEYWORD_VALUE = re.compile(r"\s*([A-Za-z_]+)\s*=\s*")


def _keyword_values(raw: str) -> dict[str, str]:
    """libpq's `keyword=value ...` form: a value is single-quoted (with \\' and \\\\) or runs to
    the next whitespace. Anything else is not a connection string."""
    parts: dict[str, str] = {}
    position = 0
    while position < len(raw):
        match = _KEYWORD_VALUE.match(raw, position)
        if not match or match.group(1) not in LIBPQ_KEYWORDS:
            raise DatabaseUrlError(NOT_A_URL)
        position = match.end()
        value: list[str] = []
        if raw.startswith("'", position):
            position += 1
            while position < len(raw) and raw[position] != "'":
                if raw[position] == "\\" and position + 1 < len(raw):
                    position += 1
                value.append(raw[position])
                position += 1
            if position >= len(raw):
                raise DatabaseUrlError(NOT_A_URL)
            position += 1
        else:
            while position < len(raw) and not raw[position].isspace():
                if raw[position] == "\\" and position + 1 < len(raw):
                    position += 1
                value.append(raw[position])
                position += 1
        parts[match.group(1)] = "".join(value)
        if position < len(raw) and not raw[position].isspace():
            raise DatabaseUrlError(NOT_A_URL)
        while position < len(raw) and raw[position].isspace():
            position += 1
    return parts


def _as_url(parts: dict[str, str], driver: str) -> URL:
    """libpq's keywords as a SQLAlchemy URL; the keywords it has no field for go in the query,
    which the libpq drivers hand back to libpq as they are."""
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
    else:  # the form the libpq drivers pass through: host=h1,h2&port=p1,p2
        parts["host"] = ",".join(hosts)
        if any(ports):
            parts["port"] = ",".join(ports)
    return URL.create(
        f"postgresql+{driver}",
        username=parts.pop("user", None),
        password=parts.pop("password", None),
        host=host,
        port=port,
        database=parts.pop("dbname", None),
        query=parts,
    )


def one_line(error: BaseException, url: URL | None) -> str:
    """The server's or driver's message, first line only, with the password masked where it is
    whole."""
    message = drivers.first_line(str(drivers.original(error)))
    password = str(url.password) if url is not None and url.password else ""
    if len(password) >= SHORTEST_MASKED_PASSWORD:
        message = message.replace(password, "***")
    return message
