"""The terminal of `bulkinfer run`: log lines of every origin kept off it, and the progress display."""

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from bulkinfer.console import ProgressDisplay
from bulkinfer.errors import ConfigError
from bulkinfer.format.progress import process_counts, read_progress

# Noise of every origin the engine produces: Python logging, C-level writes to descriptors 1 and 2,
# and a child process (vLLM's engine core) inheriting them; then the summary, and a line at interpreter exit.
_SCRIPT = textwrap.dedent(
    """
    import atexit, json, logging, os, subprocess, sys
    from bulkinfer.console import QuietTerminal, attach_log

    logging.basicConfig(level=logging.INFO)
    atexit.register(lambda: os.write(1, b"NOISE shutdown at exit\\n"))
    with QuietTerminal(verbose={verbose}, until_exit=True):
        print("NOISE python stdout")
        logging.getLogger("vllm").warning("NOISE logger")
        os.write(1, b"NOISE fd1\\n")
        attach_log(sys.argv[1])
        os.write(2, b"NOISE fd2\\n")
        subprocess.run(["sh", "-c", "echo NOISE child out; echo NOISE child err >&2"], check=True)
    print(json.dumps({{"summary": True}}))
    """
)


def _run_script(tmp_path, verbose):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT.format(verbose=verbose))
    vdir = tmp_path / "versions" / "v1"
    return subprocess.run([sys.executable, str(script), str(vdir)], capture_output=True, text=True, timeout=60), vdir


def test_log_lines_of_every_origin_go_to_the_versions_log_and_stdout_is_one_json_object(tmp_path):
    done, vdir = _run_script(tmp_path, verbose=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"summary": True}
    assert done.stderr.splitlines() == [f"log: {vdir / 'run.log'}"]
    log = (vdir / "run.log").read_text()
    for line in ("python stdout", "logger", "fd1", "fd2", "child out", "child err", "shutdown at exit"):
        assert f"NOISE {line}" in log


def test_verbose_brings_the_log_lines_back_on_stderr_and_keeps_stdout_clean(tmp_path):
    done, vdir = _run_script(tmp_path, verbose=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"summary": True}
    for line in ("python stdout", "logger", "fd1", "fd2", "child out", "child err", "shutdown at exit"):
        assert f"NOISE {line}" in done.stderr
    assert not (vdir / "run.log").exists()


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rates_and_eta_from_the_counts(tmp_path):
    clock = _Clock()
    display = ProgressDisplay(str(tmp_path), io.StringIO(), mode="lines", clock=clock)
    counts = process_counts(str(tmp_path))
    counts.add("to_generate", 100)
    counts.add("generated", 10, output_tokens=None)
    counts.flush()
    display._started = clock.now
    assert display.status(read_progress(str(tmp_path)), clock.now)["eta_s"] is None  # one point: no rate yet
    counts.add("generated", 20)
    counts.flush()
    clock.now += 10
    status = display.status(read_progress(str(tmp_path)), clock.now)
    assert status["prompts_per_s"] == pytest.approx(2.0) and status["eta_s"] == pytest.approx(35.0)
    assert "generated 30" in display.line(status) and "ETA 0:35" in display.line(status)


def test_plain_lines_every_interval_when_not_a_terminal(tmp_path):
    stream = io.StringIO()
    counts = process_counts(str(tmp_path))
    with ProgressDisplay(str(tmp_path), stream, mode="auto", interval=0.5):
        counts.add("rows_read", 42)
        counts.flush()
        time.sleep(1.8)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3  # at least two interval lines and the final one
    assert all(line.startswith("bulkinfer: progress ") for line in lines)
    assert "rows read 42" in lines[-1]
    assert (tmp_path / "timeline.jsonl").read_text().count("\n") >= 3


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"--progress_interval must be > 0 seconds, got 0"):
        ProgressDisplay(str(tmp_path), io.StringIO(), interval=0)


def test_bar_shows_generated_of_to_generate_and_the_figures(tmp_path):
    stream = io.StringIO()
    counts = process_counts(str(tmp_path))
    with ProgressDisplay(str(tmp_path), stream, mode="bar"):
        counts.add("rows_read", 12)
        counts.add("to_generate", 10)
        counts.add("generated", 3, output_tokens=7)
        counts.flush()
        time.sleep(0.8)
    text = stream.getvalue()
    assert "3/10" in text and "rows read 12" in text and "prompts/s" in text and "ETA" in text


def test_the_bar_on_a_terminal_leaves_sys_stdout_and_stderr_alone(tmp_path):
    # Loggers created while the bar shows (vLLM's, at engine start) must keep writing to the log,
    # not to proxies of the terminal that rich would put in sys.stdout/sys.stderr.
    import pty

    leader, follower = pty.openpty()
    terminal = open(follower, "w", encoding="utf-8")  # noqa: SIM115
    before = (sys.stdout, sys.stderr)
    try:
        with ProgressDisplay(str(tmp_path), terminal, mode="auto") as display:
            time.sleep(0.8)
            assert display.mode == "bar"
            assert (sys.stdout, sys.stderr) == before
    finally:
        terminal.close()
        os.close(leader)


def test_a_user_error_is_one_line_and_leaves_no_log_behind(tmp_path):
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkinfer.cli",
            "run",
            "--task",
            "synonyms",
            "--input",
            str(tmp_path / "none.parquet"),
            "--output",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(env_tmp)},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"bulkinfer: error: --input {tmp_path / 'none.parquet'}: no such file (no Parquet file matches {tmp_path / 'none.parquet'})"
    ]
    assert list(env_tmp.iterdir()) == []
