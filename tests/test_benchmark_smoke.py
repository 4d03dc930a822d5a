"""The benchmark runs end to end at a tiny size and its numbers are sane (never its timings)."""

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = PROJECT_ROOT / "bench" / "benchmark.py"
BENCHMARKS_MD = PROJECT_ROOT / "BENCHMARKS.md"


def run_benchmark(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARK), "--rows", "20000", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=55,
    )


def test_benchmark_at_a_tiny_size(tmp_path):
    committed = BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else None

    completed = run_benchmark(tmp_path)

    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((tmp_path / "results_20k.json").read_text())["results"]
    assert set(results) == {"reference", "ours", "limit", "reference_rerun", "ours_rerun"}
    for result in results.values():
        assert result["exit_code"] == 0
        assert result["unique_on_pair"]
        assert result["probe_inserts"] > 0
        assert result["probe_errors"] == 0
    for key in ("ours", "ours_rerun", "limit"):
        assert results[key]["rows_lost"] == 0
        assert results[key]["null_phone_lost"] == 0
    assert results["ours"]["rows_deleted"] > 0  # duplicates moved to the archive, not lost
    assert results["reference"]["null_phone_lost"] > 0
    assert results["reference"]["rows_lost"] == results["reference"]["rows_deleted"]
    assert (tmp_path / "insert_wait_20k.png").stat().st_size > 0
    for word in ("PASS", "reference SQL", "ours (alembic upgrade head)"):
        assert word in completed.stdout
    # Only --write-benchmarks-md touches the committed BENCHMARKS.md.
    assert (BENCHMARKS_MD.read_bytes() if BENCHMARKS_MD.exists() else None) == committed
