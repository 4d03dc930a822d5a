"""The benchmark runs end to end at a tiny size and its report is sane (never its timings); its
log reading, settings and attribution hold on synthetic input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.attribution import Timeline, phase_spans, slowest_inserts, summarise_phases
from bench.observe import PhaseStart, Sample, phase_kind, phase_name
from bench.report import write_benchmarks_md
from bench.server_settings import memory_total_mb, server_settings
from bench.writers import ACCEPTED, Attempt

# What these prove does not depend on the server's major (scripts/test.sh: one major only).
pytestmark = pytest.mark.any_major

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = PROJECT_ROOT / "bench" / "benchmark.py"
BENCHMARKS_MD = PROJECT_ROOT / "BENCHMARKS.md"
CONTENDERS = {
    "reference",
    "ours",
    "by_hand",
    "limit",
    "reference_rerun",
    "ours_rerun",
    "ours_rollback",
}


def run_benchmark(out: Path, *arguments: str) -> subprocess.CompletedProcess:
    # --fast and one round: CI needs the report's shape, not durable numbers.
    return subprocess.run(
        [sys.executable, str(BENCHMARK), "--fast", "--repeat", "1", "--out", str(out), *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )


def failure_output(completed: subprocess.CompletedProcess) -> str:
    return completed.stderr[-2000:] + completed.stdout[-3000:]


def assert_every_insert_in_a_phase(result: dict) -> None:
    assert sum(phase["probe_inserts"] for phase in result["phases"]) == result["probe_inserts"]
    assert sum(phase["stream_inserts"] for phase in result["phases"]) == result["stream_inserts"]


def assert_reference_finished_or_broke_on_a_duplicate(result: dict) -> None:
    """The live duplicates may land between the reference's DELETE and its index build."""
    assert result["exit_code"] == 0 or "could not create unique index" in result["failure"]


def test_benchmark_at_a_tiny_size(tmp_path):
    committed = BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else None

    completed = run_benchmark(tmp_path, "--rows", "20000", "-c", "wal_compression=pglz")

    assert completed.returncode == 0, failure_output(completed)
    run = json.loads((tmp_path / "results_20k_heavy_fast_wal_compression-pglz.json").read_text())
    settings, results = run["info"]["settings"], run["results"]
    assert set(results) == CONTENDERS
    # The settings the server reported, the override among them.
    assert settings["fsync"] == "off" and settings["wal_compression"] == "pglz"
    assert "server (fast): fsync=off" in completed.stdout
    for result in results.values():
        assert result["probe_inserts"] > 0
        assert result["probe_errors"] == result["stream_errors"] == 0, result["write_failures"]
        assert_every_insert_in_a_phase(result)
    for key in ("ours", "ours_rerun", "limit"):
        assert results[key]["exit_code"] == 0, results[key]["failure"]
        assert results[key]["unique_on_pair"]
        assert results[key]["rows_lost"] == 0
        assert results[key]["null_phone_lost"] == 0
    for key in ("reference", "reference_rerun", "by_hand"):
        assert_reference_finished_or_broke_on_a_duplicate(results[key])
    # The recipe by hand logs its three steps as phases, whether or not a late duplicate broke
    # its build.
    assert {"dedupe", "build"} <= {p["kind"] for p in results["by_hand"]["phases"]}
    assert results["reference"]["null_phone_lost"] > 0
    assert results["reference"]["rows_lost"] == results["reference"]["rows_deleted"]

    ours = results["ours"]
    assert ours["rows_deleted"] > 0  # duplicates moved to the archive, not lost
    assert {"start-up", "dedupe", "build", "promote"} <= {p["kind"] for p in ours["phases"]}
    assert ours["wal_bytes"] > 0
    assert sum(p["wal_bytes"] for p in ours["phases"] if p["kind"] == "dedupe") > 0
    # The duplicate stream ran beside ours, and the constraint rejected every copy with 23505.
    assert ours["stream_inserts"] > 0
    rerun = results["ours_rerun"]
    assert rerun["stream_rejected"] == rerun["stream_inserts"] > 0
    # The rollback puts every archived row back: no unique on the pair, nothing lost.
    rollback = results["ours_rollback"]
    assert rollback["exit_code"] == 0, rollback["failure"]
    assert not rollback["unique_on_pair"]
    assert rollback["rows_lost"] == rollback["rows_deleted"] == 0
    assert "restore" in {p["kind"] for p in rollback["phases"]}
    assert results["limit"]["stream_inserts"] == 0
    assert sum(sum(r["probe_wait_events"].values()) for r in results.values()) > 0

    for words in (
        "PASS",
        "per phase",
        "duplicate stream",
        "rejected as duplicates (expected)",
        "total time, ours / by hand",
        "rollback / upgrade",
    ):
        assert words in completed.stdout
    assert (tmp_path / "insert_wait_20k_heavy_fast_wal_compression-pglz.png").stat().st_size > 0
    # Only --write-benchmarks-md touches the committed BENCHMARKS.md.
    assert (BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else None) == committed

    written = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(tmp_path, written)
    markdown = written.read_text()
    assert "## 20,000 rows, heavy mix, fast, wal_compression=pglz" in markdown
    for words in ("fsync=off", "| phase | kind |", "surplus keyed rows", "insert_wait_20k_heavy"):
        assert words in markdown


def test_growth_at_tiny_sizes(tmp_path):
    completed = run_benchmark(tmp_path, "--growth", "5k,10k", "--mix", "realistic")

    assert completed.returncode == 0, failure_output(completed)
    run = json.loads((tmp_path / "growth_5k-10k_realistic_fast.json").read_text())
    assert [point["size"] for point in run["points"]] == ["5K", "10K"]
    for point in run["points"]:
        assert set(point["results"]) == {"reference", "ours", "ours_rollback"}
        assert point["results"]["ours"]["rows_lost"] == 0
        assert point["results"]["ours_rollback"]["rows_lost"] == 0
        assert_reference_finished_or_broke_on_a_duplicate(point["results"]["reference"])
    for words in ("ours per row at 10K / at 5K", "ours rollback per row at 10K / at 5K"):
        assert words in completed.stdout
    assert "rollback / upgrade at 10K" in completed.stdout
    (tmp_path / "findings.md").write_text("## What these runs found\n\nGrowth is linear.\n")
    written = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(tmp_path, written)
    markdown = written.read_text()
    assert "## Growth (5K, 10K), realistic mix, fast" in markdown
    for size in ("5K", "10K"):
        assert f"**At {size}: waits, errors, rows lost and WAL**" in markdown
        assert f"**At {size}: where the probe waited**" in markdown
    assert markdown.index("Growth is linear.") < markdown.index("## Growth (5K, 10K)")


def test_race_at_a_tiny_size(tmp_path):
    """The race runs its contenders without a standby, then beside a real streaming standby
    on a capped link (ours paced and unpaced too), and reports the standby's replay lag per
    phase and its targets."""
    completed = run_benchmark(tmp_path, "--race", "20k", "--link-rate", "1")

    assert completed.returncode == 0, failure_output(completed)
    run = json.loads((tmp_path / "race_20k_heavy_fast.json").read_text())
    without, beside = run["results"], run["beside_standby"]
    assert set(without) == {"reference", "ours", "by_hand"}
    assert set(beside) == {"reference", "ours", "ours_unpaced", "by_hand"}
    for key in ("ours", "ours_unpaced"):
        assert beside[key]["exit_code"] == 0 and beside[key]["unique_on_pair"]
        assert beside[key]["batches"] >= 1
        assert beside[key]["max_replay_lag"] is not None
        assert any(phase["max_replay_lag"] is not None for phase in beside[key]["phases"])
    assert without["ours"]["max_replay_lag"] is None
    for words in (
        "ours paced / ours unpaced, with a standby",
        "standby's replay lag during the move, ours paced",
        "total time, ours / by hand",
        "worst insert wait, ours, with a standby",
    ):
        assert words in completed.stdout
    written = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(tmp_path, written)
    assert "## The race at 20,000 rows, heavy mix, fast" in written.read_text()


def test_phase_lines_are_read_by_shape_and_sorted_by_keyword():
    logger = "INFO  [alembic_lossless_unique]"
    phases = {
        "INFO  [meta_assets] archive duplicates ...": ("archive duplicates", "dedupe"),
        f"{logger} install duplicate guard ...": ("install duplicate guard", "guard"),
        f"{logger} list duplicates ...": ("list duplicates", "dedupe"),
        f"{logger} move duplicates ...": ("move duplicates", "dedupe"),
        f"{logger} build index concurrently ...\n": ("build index concurrently", "build"),
        f"{logger} promote to constraint ...": ("promote to constraint", "promote"),
        f"{logger} drop redundant uniques ...": ("drop redundant uniques", "other"),
    }
    for line, (name, kind) in phases.items():
        assert phase_name(line) == name, line
        assert phase_kind(name) == kind, line
    for line in (
        "INFO  [meta_assets] archived 3 rows from 3 duplicate groups",
        "WARNI [meta_assets] a duplicate arrived during the build; building again ...",
        "INFO  [alembic.runtime.migration] Running upgrade 0001 -> 0002, unique pair",
    ):
        assert phase_name(line) is None, line


def test_durable_is_the_default_and_names_postgresql_defaults():
    durable = server_settings(fast=False, overrides={"wal_compression": "on"})
    for name in ("fsync", "full_page_writes", "synchronous_commit", "wal_compression"):
        assert durable[name] == "on"
    assert durable["work_mem"] == "4MB" and durable["maintenance_work_mem"] == "64MB"
    assert durable["shared_buffers"] == f"{memory_total_mb() // 4}MB"
    # --fast leaves durability to the throwaway server's FAST_SETTINGS.
    assert "fsync" not in server_settings(fast=True, overrides={})


def test_waits_wal_and_wait_events_are_attributed_to_phases():
    starts = [PhaseStart("start-up", "start-up", 0.0), PhaseStart("move duplicates", "dedupe", 1.0)]
    spans = phase_spans(starts, ended=3.0, tail_end=3.5)
    samples = [
        Sample(0.0, 1000, {"probe": None}),
        Sample(1.0, 1100, {"probe": None}),
        Sample(2.0, 1300, {"probe": "IO/WALSync"}),
        Sample(3.0, 1700, {"probe": None}),
        Sample(3.5, 1700, {"probe": None}),
    ]
    probe = [Attempt(0.5, 0.001, ACCEPTED), Attempt(1.9, 0.2, ACCEPTED)]
    timeline = Timeline(samples)

    phases = summarise_phases(spans, probe, [], timeline)

    assert [(p.name, p.wal_bytes, p.probe_inserts) for p in phases] == [
        ("start-up", 100, 1),
        ("move duplicates", 600, 1),
        ("(after the command exited)", 0, 0),
    ]
    assert phases[1].probe_events == {"IO/WALSync": 1} and phases[1].probe_slow == 1
    assert timeline.wal_between(0.5, 1.5) == 150  # interpolated between samples
    worst = slowest_inserts(probe, spans, timeline, "probe")[0]
    assert (worst.phase, worst.events) == ("move duplicates", {"IO/WALSync": 1})


def test_partitioned_at_a_tiny_size(tmp_path):
    """Ours both ways on the same rows, hash-partitioned and plain, both keyed (id,
    workspace_id); the report sets them side by side with partitioned / plain ratios."""
    completed = run_benchmark(tmp_path, "--partitioned", "5k")

    assert completed.returncode == 0, failure_output(completed)
    run = json.loads((tmp_path / "partitioned_5k_heavy_fast.json").read_text())
    results = run["results"]
    assert set(results) == {
        "ours_plain",
        "ours_partitioned",
        "ours_plain_rollback",
        "ours_partitioned_rollback",
    }
    for key, result in results.items():
        assert result["exit_code"] == 0, result["failure"]
        assert result["unique_on_pair"] == (not key.endswith("_rollback"))
        assert result["rows_lost"] == result["null_phone_lost"] == 0
        assert result["probe_errors"] == result["stream_errors"] == 0, result["write_failures"]
        assert_every_insert_in_a_phase(result)
    # The same duplicates in both: each upgrade archives its table's surplus.
    assert results["ours_plain"]["rows_deleted"] > 0
    assert results["ours_partitioned"]["rows_deleted"] > 0
    # The partitioned upgrade went partition by partition.
    assert "partition public.meta_assets_cache_p15" in {
        phase["name"] for phase in results["ours_partitioned"]["phases"]
    }
    for words in (
        "PRIMARY KEY (id, workspace_id)",
        "upgrade, partitioned / plain: time",
        "downgrade, partitioned / plain: time",
    ):
        assert words in completed.stdout
    written = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(tmp_path, written)
    markdown = written.read_text()
    assert "## Partitioned and plain at 5,000 rows, heavy mix, fast" in markdown
    assert "**Partitioned and plain, side by side**" in markdown
