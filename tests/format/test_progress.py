"""Progress counter files: one per process, summed by the reader."""

import json
import multiprocessing

import pytest

from bulkinfer.format.progress import COUNTS, TOKEN_BUCKETS, bucket_of, process_counts, read_progress


def _worker(directory: str, n: int) -> None:
    counts = process_counts(directory)
    counts.add("rows_read", n)
    counts.add("to_generate", 2)
    for tokens in (3, 100):
        counts.add("generated", 1, prompt_tokens=tokens, output_tokens=tokens // 2)
    counts.flush()


def test_counts_of_every_process_are_summed(tmp_path):
    context = multiprocessing.get_context("spawn")  # separate interpreters, as Beam's worker processes are
    workers = [context.Process(target=_worker, args=(str(tmp_path), n)) for n in (5, 7, 11)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    total = read_progress(str(tmp_path))
    assert total.processes == 3
    assert total.counts["rows_read"] == 23 and total.counts["to_generate"] == 6 and total.counts["generated"] == 6
    assert total.counts["prompt_tokens"] == 3 * 103 and total.counts["output_tokens"] == 3 * (1 + 50)
    assert total.prompt_token_hist[bucket_of(3)] == 3 and total.prompt_token_hist[bucket_of(100)] == 3
    assert sum(total.output_token_hist) == 6
    assert total.engine_from is not None and total.engine_to is not None and total.engine_seconds >= 0


def test_a_file_being_replaced_is_skipped_until_next_time(tmp_path):
    _worker(str(tmp_path), 4)
    (tmp_path / "other-host-1.json").write_text('{"counts": {"rows_re')
    total = read_progress(str(tmp_path))
    assert total.processes == 1 and total.counts["rows_read"] == 4


def test_nothing_counted_yet(tmp_path):
    total = read_progress(str(tmp_path))
    assert total.processes == 0 and total.counts == dict.fromkeys(COUNTS, 0) and total.engine_seconds == 0.0


@pytest.mark.parametrize(("tokens", "bucket"), [(0, 0), (4, 0), (5, 1), (32, 3), (33, 4), (TOKEN_BUCKETS[-1] + 1, len(TOKEN_BUCKETS))])
def test_token_buckets(tokens, bucket):
    assert bucket_of(tokens) == bucket


def test_files_are_json_a_reader_outside_bulkinfer_can_read(tmp_path):
    _worker(str(tmp_path), 1)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["counts"]["rows_read"] == 1 and data["token_buckets"] == list(TOKEN_BUCKETS)


def test_a_batch_of_generations_counts_as_each_of_them_would(tmp_path):
    prompt = [1, 4, 5, 300, 40_000, 16]
    output = [0, 9, 9, 2, 33, 16]
    (tmp_path / "one").mkdir(), (tmp_path / "batch").mkdir()
    one, batch = process_counts(str(tmp_path / "one")), process_counts(str(tmp_path / "batch"))
    for p, o in zip(prompt, output, strict=True):
        one.add("generated", 1, prompt_tokens=p, output_tokens=o)
    one.add("generated")
    one.add("generated")  # two failed generations: counted, without tokens
    batch.add_generations("generated", prompt, output, failed=2)
    for counts in (one, batch):
        counts.flush()
    first, second = (read_progress(str(tmp_path / name)) for name in ("one", "batch"))
    assert first.counts == second.counts and first.counts["generated"] == 8 and first.counts["output_tokens"] == 69
    assert first.prompt_token_hist == second.prompt_token_hist and first.output_token_hist == second.output_token_hist
