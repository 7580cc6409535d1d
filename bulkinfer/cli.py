"""The ``bulkinfer`` command line: run jobs, look predictions up, compare tables, export training sets."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from bulkinfer.errors import ConfigError, GateError, InputError, TableError

_USER_ERRORS = (ConfigError, InputError, TableError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bulkinfer`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bulkinfer", description="Offline bulk LLM inference into looked-up prediction tables.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run a task over a Parquet corpus and publish a table (see `bulkinfer run --help`)", add_help=False)
    lookup = commands.add_parser("lookup", help="look queries up in a published table; one JSON object per line")
    lookup.add_argument("--table", required=True, help="table directory (the job's --output)")
    lookup.add_argument("--version", default=None, help="a version name (default: the published one)")
    lookup.add_argument("queries", nargs="*", help="queries to look up; none: read one per line from stdin")
    match = commands.add_parser("match", help="which concepts live queries are about (phrases inside them); one JSON object per line")
    match.add_argument("--table", required=True, help="table directory of a list task (the job's --output)")
    match.add_argument("--version", default=None, help="a version name (default: the published one)")
    match.add_argument("--exact", action="store_true", help="only the whole query as an item or concept key, no phrases inside it")
    match.add_argument("queries", nargs="*", help="queries to match; none: read one per line from stdin")
    export = commands.add_parser("export", help="export a version for lookups: an embedded store file, or Redis")
    targets = export.add_subparsers(dest="target", required=True)
    export_store = targets.add_parser(
        "store",
        help="write versions/<version>/store.sqlite and, for list tasks, its match index (versions published before either existed)",
    )
    export_store.add_argument("--table", required=True, help="table directory")
    export_store.add_argument("--version", default=None, help="a version name (default: the published one)")
    export_redis = targets.add_parser("redis", help="write a version to Redis under its own namespace, then flip the pointer")
    export_redis.add_argument("--table", required=True, help="table directory")
    export_redis.add_argument("--url", required=True, help="Redis URL, e.g. redis://127.0.0.1:6379/0")
    export_redis.add_argument("--name", default=None, help="table name in the key layout (default: the table directory's name)")
    export_redis.add_argument("--version", default=None, help="a version name (default: the published one)")
    export_redis.add_argument("--grace_seconds", type=int, default=600, help="how long superseded versions stay readable (default 600)")
    export_redis.add_argument("--batch_keys", type=int, default=10_000, help="keys per pipelined round trip (default 10000)")
    serve = commands.add_parser("serve", help="HTTP lookup service for the published version; follows new publishes")
    serve.add_argument("--table", required=True, help="table directory")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--max_query_chars", type=int, default=1024, help="longest query accepted (default 1024)")
    serve.add_argument("--max_batch", type=int, default=1000, help="most queries per POST (default 1000)")
    serve.add_argument("--reload_interval", type=float, default=1.0, help="seconds between checks of CURRENT (default 1)")
    serve.add_argument("--access_log", action="store_true", help="log every request")
    serve.add_argument("--request_timeout", type=float, default=10.0, help="seconds a request may take to arrive whole (default 10)")
    commands.add_parser("tasks", help="list the built-in task specs")
    report = commands.add_parser("report", help="write a version's HTML run report (self-contained: plots inline, opens offline)")
    report.add_argument("--table", required=True, help="table directory")
    report.add_argument("--version", default=None, help="a version name (default: the published one)")
    report.add_argument("--out", required=True, help="the HTML file to write")
    versions = commands.add_parser("versions", help="list a table's versions with their manifest counts; one JSON object per line")
    versions.add_argument("--table", required=True, help="table directory")
    rollback = commands.add_parser("rollback", help="publish an earlier version again")
    rollback.add_argument("--table", required=True, help="table directory")
    rollback.add_argument("--to", default=None, help="version to publish (default: the newest earlier one whose gates passed)")
    compare = commands.add_parser("compare", help="compare two tables on their shared keys: may model B replace model A?")
    compare.add_argument("--table", action="append", default=[], help="table directory; twice: A (the reference), then B (the candidate)")
    compare.add_argument("--version-a", default=None, help="A's version (default: the published one)")
    compare.add_argument("--version-b", default=None, help="B's version (default: the published one)")
    compare.add_argument("--sample", type=int, default=20, help="disagreements to show, chosen by key hash (default 20)")
    compare.add_argument("--out", default=None, help="also write the full report as JSON to this file")
    export = commands.add_parser("export-training", help="write a version's (prompt, answer) pairs as a fine-tuning set (JSONL or Parquet)")
    export.add_argument("--table", required=True, help="table directory")
    export.add_argument("--version", default=None, help="version to export (default: the published one); it must have passed its gates")
    export.add_argument("--out", required=True, help="output file, .jsonl or .parquet")
    export.add_argument("--format", default="messages", help="messages (system/user/assistant, default) or prompt_completion")
    export.add_argument("--prompt", default="zero_shot", help="zero_shot (no examples, default) or task (exactly the task prompt)")
    export.add_argument("--task", default=None, help="task name or spec path; only for versions whose manifest has no task_spec")
    export.add_argument("--no-metadata", action="store_true", help="leave out the per-record metadata object (provenance)")

    bench = commands.add_parser("bench", help="generation throughput: raw vLLM, Beam's vLLM handler, the job and its engine stage")
    bench.add_argument(
        "--pipeline",
        action="store_true",
        help="instead: the job's own cost with an instant stand-in engine (full run and unchanged rerun over --rows queries), as JSON",
    )
    bench.add_argument("--rows", type=int, default=100_000, help="with --pipeline: distinct queries in the corpus (default 100000)")
    bench.add_argument("--device", default="cpu", help="cpu (tiny model, default) or gpu (workload W1's Qwen2.5-0.5B-shaped model, bf16)")
    bench.add_argument("--prompts", type=int, default=1024, help="distinct prompts per pass (default 1024)")
    bench.add_argument("--repeats", type=int, default=3, help="timed passes per variant, interleaved; figures are medians (default 3)")
    bench.add_argument("--only", default="a,b,c,d", help="variants, comma-separated: a raw vLLM, b Beam's handler, c job, d engine stage")
    bench.add_argument("--out", default=None, help="also write the result as JSON to this file")
    bench.add_argument("--model", default=None, help="an existing model directory instead of building one")
    bench.add_argument("--job_args", default="", help="extra `bulkinfer run` flags for c and d, e.g. '--batch_size 1024'")
    bench.add_argument(
        "--step",
        action="append",
        default=[],
        help="an engine-stage variant d1, d2, ... with these extra job flags (repeat), interleaved with the others on the same engine",
    )

    if argv[:1] == ["run"]:
        return _run(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "lookup":
            return _lookup(args)
        if args.command == "match":
            return _match(args)
        if args.command == "versions":
            return _versions(args)
        if args.command == "rollback":
            return _rollback(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "export-training":
            return _export_training(args)
        if args.command == "export":
            return _export_store(args) if args.target == "store" else _export_redis(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "report":
            return _report(args)
        return _tasks()
    except _USER_ERRORS as e:
        print(f"bulkinfer: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an operational failure (disk, network, Redis, a damaged file): one line, details in a log
        from bulkinfer.failures import report_failure

        return report_failure(e, args.command)


def _run(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        from bulkinfer.pipelines.cache_job import CacheJobOptions
        from bulkinfer.pipelines.console_options import DRY_RUN_FLAG, DRY_RUN_HELP, ConsoleOptions

        parser = argparse.ArgumentParser(
            prog="bulkinfer run",
            description="Run a task over a Parquet corpus and publish a versioned table. Beam flags (--runner, ...) pass through.",
        )
        CacheJobOptions._add_argparse_args(parser)
        ConsoleOptions._add_argparse_args(parser)
        parser.add_argument(DRY_RUN_FLAG, action="store_true", help=DRY_RUN_HELP)
        parser.print_help()
        return 0
    from bulkinfer.console import ProgressDisplay, QuietTerminal

    # Read before Beam is imported: its import-time warnings belong in the log, not on the terminal.
    dry, verbose = "--dry_run" in argv, "--verbose" in argv
    argv = [a for a in argv if a != "--dry_run"]
    # vLLM logs every engine step of its start at INFO: kept in the run's log file, not on the
    # terminal. With --verbose the lines come to stderr, at WARNING unless VLLM_LOGGING_LEVEL says otherwise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING" if verbose else "INFO")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bulkinfer").setLevel(logging.INFO)
    progress_dir = own_progress_dir = None
    try:
        # Until the process ends: the engine's shutdown lines at exit go to the log too.
        with QuietTerminal(verbose, keep_log=not dry, until_exit=True) as terminal:
            from apache_beam.options.pipeline_options import PipelineOptions

            from bulkinfer.failures import no_tracebacks_on_terminal
            from bulkinfer.pipelines.console_options import ConsoleOptions, counts_locally

            console = PipelineOptions(argv).view_as(ConsoleOptions)
            # Remote workers' counts cannot be read from here: their runner's UI shows progress.
            shown = console.progress if counts_locally(PipelineOptions(argv)) else "off"
            if dry:
                from bulkinfer.tools.dry_run import dry_run

                result = dry_run(argv)
            else:
                from bulkinfer.pipelines.cache_job import run

                no_tracebacks_on_terminal()
                progress_dir = console.progress_dir or (own_progress_dir := tempfile.mkdtemp(prefix="bulkinfer-progress-"))
                with ProgressDisplay(progress_dir, terminal.terminal_err, shown, console.progress_interval):
                    manifest = run([*argv, "--progress_dir", progress_dir] if own_progress_dir else argv)
    except _USER_ERRORS as e:
        print(f"bulkinfer: error: {e}", file=sys.stderr)
        return 2
    except GateError as e:
        print(f"bulkinfer: not published: {e}", file=sys.stderr)
        # The version was written and measured: stdout still carries its summary, for `| jq` and schedulers.
        print_run_summary(e.manifests)
        return 3
    except Exception as e:  # an operational failure (disk, engine, lock): nothing published; one line, details in a log
        from bulkinfer.failures import report_failure

        return report_failure(e, "run")
    finally:
        if own_progress_dir:
            shutil.rmtree(own_progress_dir, ignore_errors=True)
    if dry:
        return _print_estimate(result, console.estimate_out)
    print_run_summary(manifest["tables"] if "tables" in manifest else {None: manifest})
    return 0


def print_run_summary(manifests: dict[str | None, dict[str, Any]]) -> None:
    """One JSON line per table of a run on stdout: version, whether it was published, counts, reasons, quality, time.

    Args:
        manifests: the run's manifests; None as the key of a single table's, else the
            table directory of each adapter's.
    """
    for table, one in manifests.items():
        summary = {"version": one["version"], "published": bool(one["gates"]["passed"])}
        summary.update({name: one[name] for name in ("counts", "dead_letter_reasons", "quality", "wall_seconds")})
        print(json.dumps({"table": table, **summary} if table else summary))


def _print_estimate(result: dict[str, Any], out: str | None) -> int:
    from bulkinfer.tools.dry_run import render_estimate

    print(render_estimate(result), file=sys.stderr)
    if out:
        from bulkinfer.format import layout

        layout.write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from bulkinfer.tools.report import write_report

    version = write_report(args.table, args.version, args.out)
    print(json.dumps({"table": args.table, "version": version, "report": args.out}))
    return 0


def _lookup(args: argparse.Namespace) -> int:
    from bulkinfer.lookup.table import open_table

    with open_table(args.table, args.version) as table:
        queries = args.queries or [line.rstrip("\n") for line in sys.stdin]
        for answer in table.answer_many(queries):
            print(json.dumps(answer, ensure_ascii=False))
    return 0


def _match(args: argparse.Namespace) -> int:
    from bulkinfer.lookup.table import open_table

    with open_table(args.table, args.version) as table:
        for query in args.queries or [line.rstrip("\n") for line in sys.stdin]:
            answer = table.match(query, exact=args.exact)
            print(json.dumps({name: answer[name] for name in ("query", "key", "matches")}, ensure_ascii=False))
    return 0


def _versions(args: argparse.Namespace) -> int:
    from bulkinfer.format import layout

    try:
        current = layout.read_current(args.table)
    except TableError as e:  # the listing is what an operator repairs CURRENT from: list anyway
        print(f"bulkinfer: warning: {e}", file=sys.stderr)
        current = None
    for name, manifest in layout.list_versions(args.table):
        summary = {
            "version": name,
            "current": name == current,
            "finished_at": manifest.get("finished_at"),
            "task": manifest.get("task"),
            "model": manifest.get("model"),
            "gates_passed": manifest.get("gates", {}).get("passed"),
            "counts": manifest.get("counts"),
        }
        print(json.dumps(summary))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from bulkinfer.format import layout
    from bulkinfer.format.lock import TableLock

    before = layout.read_current_or_none(args.table)
    with TableLock(args.table, f"rollback-{before}"):
        target = layout.rollback(args.table, args.to)
    print(json.dumps({"table": args.table, "from": before, "to": target}))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from bulkinfer.format import layout
    from bulkinfer.tools.compare import compare_tables, render_summary

    if len(args.table) != 2:
        raise ConfigError(f"compare needs --table twice (A, the reference, then B, the candidate), got {len(args.table)}")
    result = compare_tables(args.table[0], args.table[1], args.version_a, args.version_b, sample=args.sample)
    print(render_summary(result))
    if args.out:
        layout.write_text(args.out, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
        print(f"report: {args.out}")
    return 0


def _export_training(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bulkinfer.tools.export_training import export_training

    result = export_training(
        args.table,
        args.out,
        version=args.version,
        fmt=args.format,
        prompt=args.prompt,
        task=args.task,
        metadata=not args.no_metadata,
    )
    print(json.dumps(asdict(result), ensure_ascii=False))
    return 0


def _export_store(args: argparse.Namespace) -> int:
    from bulkinfer.format import layout
    from bulkinfer.lookup import match, store

    if args.version is None and layout.read_current(args.table) is None:
        raise TableError(f"{args.table} has no published version (no {layout.CURRENT} file); give --version")
    version, _ = layout.resolve_version(args.table, args.version)
    started = time.perf_counter()
    path = store.write_store(args.table, version)
    # Also replaces a match index of an older format, which readers pass over (and rebuild into their cache).
    summary = match.write_match_index(args.table, version)
    items = None if summary is None else summary.items
    print(
        json.dumps(
            {
                "table": args.table,
                "version": version,
                "store": path,
                "match_items": items,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )
    return 0


def _export_redis(args: argparse.Namespace) -> int:
    from bulkinfer.lookup.redis_export import RedisExportConfig, export_version

    name = args.name or args.table.rstrip("/").rsplit("/", 1)[-1]
    config = RedisExportConfig(url=args.url, name=name, grace_seconds=args.grace_seconds, batch_keys=args.batch_keys)
    print(json.dumps({"table": args.table, **export_version(args.table, config, args.version)}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bulkinfer.lookup.serve import ServeConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(
        table=args.table,
        host=args.host,
        port=args.port,
        max_query_chars=args.max_query_chars,
        max_batch=args.max_batch,
        reload_interval_s=args.reload_interval,
        access_log=args.access_log,
        request_timeout_s=args.request_timeout,
    )
    serve(config)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import shlex

    from bulkinfer.tools.bench import render_table, run_bench

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bulkinfer").setLevel(logging.INFO)
    if args.pipeline:
        from bulkinfer.tools.pipeline_bench import run_pipeline_bench

        if args.rows < 1:
            raise ConfigError(f"--rows must be >= 1, got {args.rows}")
        text = json.dumps(run_pipeline_bench(args.rows, args.repeats), indent=2)
        if args.out:
            from bulkinfer.format import layout

            layout.write_text(args.out, text + "\n")
        print(text)
        return 0
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    steps = [shlex.split(step) for step in args.step]
    result = run_bench(args.device, args.prompts, only, args.repeats, args.model, shlex.split(args.job_args), steps=steps)
    if args.out:
        from bulkinfer.format import layout

        layout.write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(render_table(result))
    return 0


def _tasks() -> int:
    from bulkinfer.tasks.spec import builtin_task_names, load_task

    for name in builtin_task_names():
        task = load_task(name)
        print(f"{name}\t{task.output}\t{task.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
