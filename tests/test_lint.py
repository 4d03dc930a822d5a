"""squawk on the SQL the revisions emit (`alembic --sql`): no findings, and every ignore is
written beside its statement with the reason."""

import json
import re
import shutil
import subprocess

import pytest

from tests.offline_support import offline_script
from tests.support import BASELINE, HEAD

SQUAWK = shutil.which("squawk")
pytestmark = pytest.mark.skipif(SQUAWK is None, reason="squawk-cli is not installed")

SCRIPTS = {
    "upgrade-head.sql": ("upgrade", "head"),
    "downgrade-0002-0001.sql": ("downgrade", f"{HEAD}:{BASELINE}"),
    "downgrade-0001-base.sql": ("downgrade", f"{BASELINE}:base"),
}
ALEMBIC_VERSION_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS meta_assets_migration\.alembic_version \(.*?\);\n", re.S | re.M
)


@pytest.fixture(scope="module")
def emitted() -> dict[str, str]:
    return {name: offline_script(*args) for name, args in SCRIPTS.items()}


def squawk(tmp_path, name: str, sql: str) -> list[dict]:
    path = tmp_path / name
    path.write_text(sql)
    result = subprocess.run(
        [SQUAWK, "--pg-version=15", "--reporter=json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


@pytest.mark.parametrize("name", SCRIPTS)
def test_emitted_sql_has_no_findings(name, emitted, tmp_path):
    assert squawk(tmp_path, name, emitted[name]) == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_file_wide_ignores_cover_only_alembics_version_table(name, emitted, tmp_path):
    """Without the preamble (and alembic's own version table) the revisions' SQL is clean too."""
    ours = ALEMBIC_VERSION_TABLE.sub("", emitted[name].replace("squawk-ignore-file", "note"))
    assert "squawk-ignore-file" not in ours
    assert squawk(tmp_path, name, ours) == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_ignore_says_why(name, emitted):
    lines = emitted[name].splitlines()
    ignores = [n for n, line in enumerate(lines) if "squawk-ignore" in line]
    for n in ignores:
        neighbours = [lines[n - 1] if n else "", lines[n + 1] if n + 1 < len(lines) else ""]
        assert any(
            line.startswith("--") and "squawk-ignore" not in line and len(line) > 20
            for line in neighbours
        ), f"{name}: no reason beside {lines[n]!r}"


def test_squawk_does_flag_a_blocking_index_build(tmp_path):
    """The check can fail: the statement the offline DO block hides from squawk is flagged."""
    findings = squawk(
        tmp_path,
        "blocking.sql",
        "CREATE UNIQUE INDEX meta_assets_cache_workspace_id_phone_number_id_key"
        " ON public.meta_assets_cache (workspace_id, phone_number_id);\n",
    )
    assert "require-concurrent-index-creation" in {finding["rule_name"] for finding in findings}
