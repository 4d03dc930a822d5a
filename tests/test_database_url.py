"""DATABASE_URL parsing, without a server: libpq's reading of every value, and one-line refusals
that never quote the password."""

import pytest
from sqlalchemy.exc import DBAPIError

from alembic_lossless_unique.runtime.database_url import DatabaseUrlError, database_url, one_line

# Every character that means something in a URL, and a space.
SPECIAL = "a@b/c?d#e:f%g h"
ENCODED = "a%40b%2Fc%3Fd%23e%3Af%25g%20h"
PERCENT_HINT = "percent-encode any @ / ? # : or % in the user name or password (@ is %40"


def parse(raw: str):
    return database_url({"DATABASE_URL": raw})


def fragments(secret: str, size: int = 3) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            f"postgresql://app:{ENCODED}@db.example.com:5433/cache",
            ("app", SPECIAL, "db.example.com", 5433, "cache", {}),
        ),
        (
            f"postgresql://a%40b%3Ac:{ENCODED}@h/d",  # Azure-style user@server user names
            ("a@b:c", SPECIAL, "h", None, "d", {}),
        ),
        ("postgresql://app:pa:ss@h/d", ("app", "pa:ss", "h", None, "d", {})),  # libpq: first :
        ("postgresql://app:two words@h/d", ("app", "two words", "h", None, "d", {})),
        ("postgresql://app:pw@[::1]:5433/d", ("app", "pw", "::1", 5433, "d", {})),
        ("postgresql://app@[2001:db8::7]/d", ("app", None, "2001:db8::7", None, "d", {})),
        (
            "postgresql://app:pw@h/d?sslmode=require&options=-c%20lock_timeout%3D5s",
            ("app", "pw", "h", None, "d", {"sslmode": "require", "options": "-c lock_timeout=5s"}),
        ),
        (
            "postgresql:///d?host=/var/run/postgresql&user=app",
            ("app", None, "/var/run/postgresql", None, "d", {}),
        ),
        ("postgres://app:pw@h/d", ("app", "pw", "h", None, "d", {})),
        ("postgresql+asyncpg://app:pw@h/d", ("app", "pw", "h", None, "d", {})),
        ("POSTGRES+psycopg://app:pw@h/d", ("app", "pw", "h", None, "d", {})),
        ("postgresql+psycopg_async://app:pw@h/d", ("app", "pw", "h", None, "d", {})),
        ("  postgresql://app:pw@h/d\n", ("app", "pw", "h", None, "d", {})),
        (
            "host=h port=5433 dbname=d user=app password='it\\'s a secret'",
            ("app", "it's a secret", "h", 5433, "d", {}),
        ),
        (
            "postgresql://app:pw@h1:5433,h2/d?target_session_attrs=read-write",
            (
                "app",
                "pw",
                None,
                None,
                "d",
                {"host": "h1,h2", "port": "5433,", "target_session_attrs": "read-write"},
            ),
        ),
        (  # one port=... applies to every host, as in libpq
            "postgresql://app:pw@h1,h2/d?port=6000",
            ("app", "pw", None, None, "d", {"host": "h1,h2", "port": "6000,6000"}),
        ),
    ],
    ids=[
        "encoded-specials",
        "encoded-user",
        "colon-in-password",
        "space-in-password",
        "ipv6-port",
        "ipv6",
        "query",
        "socket-dir",
        "postgres-scheme",
        "other-driver",
        "scheme-case",
        "async-driver",
        "whitespace",
        "keyword-value",
        "two-hosts",
        "two-hosts-one-port",
    ],
)
def test_parsed_as_libpq_does(raw, expected):
    url = parse(raw)
    # The driver the URL names, else the first installed: psycopg2, as this repository has it.
    named = raw.strip().split("://")[0].partition("+")[2].lower() if "://" in raw else ""
    assert url.drivername == f"postgresql+{named or 'psycopg2'}"
    assert (url.username, url.password, url.host, url.port, url.database, dict(url.query)) == (
        expected
    )


PASSWORD = "Zq7@Kv9/Jm4?Tp2#Rb8:Wx5"


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://app:{PASSWORD}@h:5432/d",  # the issue: libpq would try host "Kv9/..."
        "postgresql://app:Zq7@Kv9Jm4@h/d",
        "postgresql://app:Zq7/Kv9Jm4@h/d",  # libpq: host "app", port "Zq7", dbname "Kv9Jm4@h/d"
        "postgresql://app:Zq7?Kv9Jm4@h/d",
        "postgresql://app:Zq7#Kv9Jm4@h/d",
        "postgresql://app:Zq7:Kv9/Jm4@h/d",
        "postgresql://app/Zq7Kv9Jm4@h/d",  # a / in the user name
        "postgres+asyncpg://app:Zq7Kv9Jm4@@h/d",
    ],
)
def test_unencoded_special_characters_are_refused(raw):
    with pytest.raises(DatabaseUrlError) as refused:
        parse(raw)
    message = str(refused.value)
    assert PERCENT_HINT in message
    assert "\n" not in message
    userinfo = raw.split("://", 1)[1].rsplit("@h", 1)[0]
    leaked = {fragment for fragment in fragments(userinfo) if fragment in message}
    assert not leaked, message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "DATABASE_URL is not set: export DATABASE_URL=postgresql://"),
        (" \t\n", "DATABASE_URL is not set"),
        ("Zq7Kv9Jm4", "DATABASE_URL is not a valid URL: expected postgresql://"),
        ("host=h password=Zq7 Kv9Jm4", "DATABASE_URL is not a valid URL: expected postgresql://"),
        ("mysql://app:Zq7Kv9Jm4@h/d", "DATABASE_URL names a 'mysql' database"),
        ("sqlite:///Zq7Kv9Jm4.db", "DATABASE_URL names a 'sqlite' database"),
        ("postgresql://app:Zq7Kv9Jm4@h:notaport/d", "its port is not a number"),
        ("postgresql://app:Zq7Kv9Jm4@::1/d", "its port is not a number"),  # IPv6 needs [ ]
        ("postgresql://app:Zq7Kv9%Jm4@h/d", "a % that is not followed by two hex digits"),
        ("postgresql://app:Zq7Kv9Jm4@h/d?Zq7Kv9Jm4=1", "not a libpq connection keyword"),
        ("postgresql://app:Zq7Kv9Jm4@h/d?sslmode", "a query parameter is not keyword=value"),
        ("postgresql://app:Zq7Kv9Jm4@[::1/d", "an IPv6 host has no closing ]"),
        ("postgresql+pg8000://app:Zq7Kv9Jm4@h/d", "names the pg8000 driver; this package runs on"),
        ("postgresql://app:Zq7Kv9Jm4@h1,h2/d?port=1,2,3", "it names 2 hosts but 3 ports"),
    ],
)
def test_other_refusals_are_one_line_without_the_password(raw, expected):
    with pytest.raises(DatabaseUrlError) as refused:
        parse(raw)
    message = str(refused.value)
    assert expected in message
    assert "\n" not in message
    assert not {fragment for fragment in fragments("Zq7Kv9Jm4") if fragment in message}


def test_unset():
    with pytest.raises(DatabaseUrlError, match="DATABASE_URL is not set"):
        database_url({})


def database_error(message: str) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, Exception(message))


@pytest.mark.parametrize(
    ("password", "server_says", "expected"),
    [
        (  # a one-letter password is in every word; masking it would garble the message
            "p",
            'connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs it?',
            'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        ),
        ("Zq7Kv9Jm4", 'role "Zq7Kv9Jm4" does not exist', 'role "***" does not exist'),
        ("Zq7Kv9Jm4", "", ""),
    ],
    ids=["short-password", "whole-password", "empty-message"],
)
def test_one_line(password, server_says, expected):
    url = parse(f"postgresql://app:{password}@h/d")
    assert one_line(database_error(server_says), url) == expected
    assert one_line(database_error(server_says), None) == server_says.split("\n")[0].strip()
