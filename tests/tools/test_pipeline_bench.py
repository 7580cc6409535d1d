"""``bulkinfer bench --pipeline``: the real job with the instant stand-in engine, full run then unchanged rerun."""

from __future__ import annotations

import json
import subprocess
import sys


def test_pipeline_bench_reports_a_full_run_and_a_rerun_that_generates_nothing(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bulkinfer.cli", "bench", "--pipeline", "--rows", "300", "--repeats", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result == json.loads(out.read_text())
    assert result["rows"] == 300
    assert (result["full"]["generated"], result["full"]["reused"]) == (300, 0)
    assert (result["rerun"]["generated"], result["rerun"]["reused"]) == (0, 300)
    for run in ("full", "rerun"):
        assert result[run]["wall_s"] > 0 and result[run]["peak_rss_mb"] > 50
        # wall_s is rounded to 10 ms, us_per_row comes from the unrounded time
        assert abs(result[run]["us_per_row"] - result[run]["wall_s"] / 300 * 1e6) <= 0.01 / 300 * 1e6
