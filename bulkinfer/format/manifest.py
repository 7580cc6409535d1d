"""Row accounting of a written version: every input row is behind a table key, dead-lettered or left out.

A version is published only when its rows add up. :func:`account_rows` reads the
version's shards once and returns the counts the manifest records and the rows
the quality gates measure.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bulkinfer.format import layout

if TYPE_CHECKING:
    import pyarrow as pa


class AccountingError(RuntimeError):
    """The rows of a written version do not add up to the input: a bug, never published."""


@dataclass(frozen=True)
class RowAccount:
    """Where the input rows of one version went."""

    rows: pa.Table | None
    """The version's prediction rows (key, output column, raw output, source rows, run id, language, finish reason); None without any."""
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

    @property
    def rows_dead(self) -> int:
        """Dead-lettered input rows."""
        return sum(self.dead_rows.values())


def account_rows(vdir: str, output_column: str, run_id: str, rows_in: int, not_sampled: int) -> RowAccount:
    """Reads a written version's shards and checks that its rows add up to the input.

    Args:
        vdir: the version directory.
        output_column: the task's typed output column.
        run_id: the run that wrote the version (rows of other runs are reused ones).
        rows_in: rows in the corpus.
        not_sampled: rows ``--sample`` left out on purpose.

    Raises:
        AccountingError: rows behind keys + dead-lettered + left out != rows in.
    """
    import pyarrow.compute as pc

    columns = ["key", output_column, "raw_output", "source_rows", "run_id", "language", "finish_reason"]
    rows = layout.read_shards(vdir, layout.PREDICTIONS, columns)
    dead = layout.read_shards(vdir, layout.DEAD_LETTER, ["reason", "source_rows", "run_id"])
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
    account = RowAccount(rows, keys, rows_in_table, reused, reused_dead, dict(dead_rows), dict(dead_records))
    if rows_in_table + account.rows_dead + not_sampled != rows_in:
        raise AccountingError(
            f"row accounting failed: {rows_in} input rows, but {rows_in_table} behind table keys + "
            f"{account.rows_dead} dead-lettered + {not_sampled} left out by --sample; version {run_id} left unpublished in {vdir}"
        )
    return account
