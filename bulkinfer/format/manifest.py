"""Row accounting of a written version: every input row is behind a table key, dead-lettered or left out.

A version is published only when its rows add up. :func:`account_rows` reads the
version's shards once and returns the counts the manifest records and the rows
the quality gates measure.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bulkinfer.format import layout

if TYPE_CHECKING:
    import pyarrow as pa


_BEFORE_FAN_OUT = "normalize_keys"
"""The stage of dead letters written before keys fan out into target languages (one per input row)."""


ACCOUNT_COLUMNS = ("key", "source_rows", "run_id", "language")
"""The prediction columns the row accounting reads."""


class AccountingError(RuntimeError):
    """The rows of a written version do not add up to the input: a bug, never published."""


@dataclass(frozen=True)
class RowAccount:
    """Where the input rows of one version went."""

    rows: pa.Table | None
    """The version's prediction rows (:data:`ACCOUNT_COLUMNS` and the columns asked for); None without any."""
    keys: int
    """Prediction rows (one per key)."""
    rows_in_table: int
    """Input rows behind those keys."""
    reused: int
    """Keys whose answer came from an earlier run."""
    reused_dead: int
    """Dead-letter records carried over from an earlier run."""
    dead_rows: dict[str, int] = field(default_factory=dict)
    """Dead-lettered input rows by reason."""
    dead_records: dict[str, int] = field(default_factory=dict)
    """Dead-letter records (one per key, or per row for rows without a key) by reason."""
    target_languages: int = 1
    """Prompts per key: the task's target languages (fan-out), else 1."""
    concepts: int = 0
    """Distinct keys with a prediction row (with fan-out, ``keys`` counts key x language rows)."""
    fanned_out_dead: int = 0
    """With fan-out: input rows dead-lettered before keying or whose key is dead in every target language."""

    @property
    def rows_dead(self) -> int:
        """Dead-lettered input rows (with fan-out: rows with no prediction row in any target language)."""
        return self.fanned_out_dead if self.target_languages > 1 else sum(self.dead_rows.values())


def account_rows(
    vdir: str,
    output_column: str,
    run_id: str,
    rows_in: int,
    not_sampled: int,
    target_languages: int = 1,
    columns: Sequence[str] | None = None,
) -> RowAccount:
    """Reads a written version's shards and checks that its rows add up to the input.

    With fan-out (``target_languages`` > 1) a key is asked once per target language, so
    every keyed input row must be behind a prediction row or a dead letter in each of
    them: rows behind prediction rows + rows behind per-language dead letters =
    target languages x (rows in - rows dead-lettered before keying - left out).

    Args:
        vdir: the version directory.
        output_column: the task's typed output column.
        run_id: the run that wrote the version (rows of other runs are reused ones).
        rows_in: rows in the corpus.
        not_sampled: rows ``--sample`` left out on purpose.
        target_languages: prompts per key (the task's target languages), 1 without fan-out.
        columns: what else of the prediction rows to read into ``RowAccount.rows`` besides the
            columns the accounting reads (:data:`ACCOUNT_COLUMNS`); None: the output column, raw
            output and finish reason, what the quality measures read.

    Raises:
        AccountingError: rows behind keys + dead-lettered + left out != rows in.
    """
    import pyarrow.compute as pc

    extra = [output_column, "raw_output", "finish_reason"] if columns is None else list(columns)
    rows = layout.read_shards(vdir, layout.PREDICTIONS, list(dict.fromkeys([*ACCOUNT_COLUMNS, *extra])))
    dead = layout.read_shards(vdir, layout.DEAD_LETTER, ["reason", "source_rows", "run_id", "stage", "key"])
    if target_languages > 1:
        return _account_fanned_out(rows, dead, run_id, rows_in, not_sampled, target_languages, vdir)
    keys = rows.num_rows if rows is not None else 0
    rows_in_table = int(pc.sum(rows.column("source_rows")).as_py() or 0) if keys else 0
    reused = int(pc.sum(pc.not_equal(rows.column("run_id"), run_id)).as_py() or 0) if keys else 0
    dead_rows: collections.Counter[str] = collections.Counter()
    dead_records: collections.Counter[str] = collections.Counter()
    if dead is not None:
        for reason, count in zip(dead.column("reason").to_pylist(), dead.column("source_rows").to_pylist(), strict=True):
            dead_rows[reason] += count
            dead_records[reason] += 1
    reused_dead = int(pc.sum(pc.not_equal(dead.column("run_id"), run_id)).as_py() or 0) if dead is not None else 0
    concepts = len(pc.unique(rows.column("key"))) if keys else 0
    account = RowAccount(rows, keys, rows_in_table, reused, reused_dead, dict(dead_rows), dict(dead_records), 1, concepts)
    if rows_in_table + account.rows_dead + not_sampled != rows_in:
        raise AccountingError(
            f"row accounting failed: {rows_in} input rows, but {rows_in_table} behind table keys + "
            f"{account.rows_dead} dead-lettered + {not_sampled} left out by --sample; version {run_id} left unpublished in {vdir}"
        )
    return account


def _account_fanned_out(
    rows: pa.Table | None, dead: pa.Table | None, run_id: str, rows_in: int, not_sampled: int, targets: int, vdir: str
) -> RowAccount:
    """:func:`account_rows` for a fanned-out task; ``rows_in_table`` and ``rows_dead`` stay counts of input rows.

    An input row counts as in the table when its key has a prediction row in at least one
    target language, and as dead when it was dead-lettered before keying or its key is
    dead-lettered in every target language. ``dead_rows`` by reason counts per (key, language).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = rows.num_rows if rows is not None else 0
    pair_rows = int(pc.sum(rows.column("source_rows")).as_py() or 0) if keys else 0
    reused = int(pc.sum(pc.not_equal(rows.column("run_id"), run_id)).as_py() or 0) if keys else 0
    dead_rows: collections.Counter[str] = collections.Counter()
    dead_records: collections.Counter[str] = collections.Counter()
    before_keying = 0
    dead_pairs: collections.Counter[str] = collections.Counter()  # key -> dead target languages
    dead_key_rows: dict[str, int] = {}
    pair_dead_rows = 0
    if dead is not None:
        for reason, count, stage, key in zip(*(dead.column(c).to_pylist() for c in ("reason", "source_rows", "stage", "key")), strict=True):
            dead_rows[reason] += count
            dead_records[reason] += 1
            if stage == _BEFORE_FAN_OUT or key is None:
                before_keying += count
            else:
                pair_dead_rows += count
                dead_pairs[key] += 1
                dead_key_rows[key] = count
    reused_dead = int(pc.sum(pc.not_equal(dead.column("run_id"), run_id)).as_py() or 0) if dead is not None else 0
    # Per distinct key, its last row's input rows (every language row of a key counts the same input rows).
    in_table = (
        rows.select(["key", "source_rows"]).group_by("key", use_threads=False).aggregate([("source_rows", "last")])
        if keys
        else pa.table({"key": pa.array([], pa.string()), "source_rows_last": pa.array([], pa.int64())})
    )
    rows_in_table = int(pc.sum(in_table.column("source_rows_last")).as_py() or 0)
    dead_everywhere = [key for key in dead_key_rows if dead_pairs[key] >= targets]
    in_some = pc.is_in(pa.array(dead_everywhere, pa.string()), value_set=in_table.column("key")).to_pylist()
    all_dead = sum(dead_key_rows[key] for key, kept in zip(dead_everywhere, in_some, strict=True) if not kept)
    account = RowAccount(
        rows,
        keys,
        rows_in_table,
        reused,
        reused_dead,
        dict(dead_rows),
        dict(dead_records),
        targets,
        in_table.num_rows,
        before_keying + all_dead,
    )
    keyed = rows_in - before_keying - not_sampled
    if pair_rows + pair_dead_rows != targets * keyed or rows_in_table + all_dead + before_keying + not_sampled != rows_in:
        raise AccountingError(
            f"row accounting failed: {rows_in} input rows ({before_keying} dead-lettered before keying, {not_sampled} left out "
            f"by --sample) fanned out into {targets} target languages should be {targets * keyed} rows behind prediction rows "
            f"and dead letters, but are {pair_rows} + {pair_dead_rows}; version {run_id} left unpublished in {vdir}"
        )
    return account
