"""ReuseResults: carry forward earlier results for keys whose fingerprint is unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from bulkinfer.errors import Reason
from bulkinfer.format import fs, layout
from bulkinfer.format.layout import DEAD_LETTER, PREDICTIONS
from bulkinfer.format.records import METRICS_NAMESPACE
from bulkinfer.transforms.key_tables import KEY_BUCKETS, key_buckets, split_by
from bulkinfer.transforms.spill import SpillWriter, read_spilled

REUSED = "reused"
REUSED_DEAD = "reused_dead"

SOURCES = ("previous", "previous_dead", "checkpoint", "checkpoint_dead")
"""The result sources ``ReuseResults`` joins, by name: the published version first, then checkpoints."""

# Dead letters that the same fingerprint would produce again: a prompt too long for
# the context stays too long; a greedy answer that did not parse parses no better.
# Engine failures may be transient and are retried.
_DETERMINISTIC = (Reason.PROMPT_TOO_LONG, Reason.UNPARSEABLE_OUTPUT)

_NO_LANGUAGE = "\x00"
"""Stands for a null language in joins (Arrow joins never match null to null); no language code is it."""


@dataclass(frozen=True)
class ReuseSplit:
    """What :func:`split_by_reuse` makes of a key-group table."""

    to_generate: pa.Table
    """The key-group rows no earlier result answers."""
    reused: pa.Table
    """Earlier prediction rows, one per reused (key, language), with today's ``source_rows``."""
    reused_dead: pa.Table
    """Earlier deterministic dead letters, one per (key, language) they still answer, with today's ``source_rows``."""
    resumed: int
    """How many of those came from checkpoints rather than the published version."""


def split_by_reuse(groups: pa.Table, earlier: Mapping[str, pa.Table | None], fingerprint: str, greedy: bool) -> ReuseSplit:
    """Splits key groups into those to generate and the earlier results that answer the rest.

    A (key, language) is answered by the first earlier prediction with this
    ``fingerprint`` and the same language (the language picks the examples: a result
    made for another language answered another prompt), the published version before
    checkpoints; failing that, by the first such dead letter whose reason the same
    fingerprint would give again. A key fanned out into target languages is matched
    per language. Keys the groups do not hold (they left the corpus) leave the table.
    Public so that ``bulkinfer run --dry_run`` applies the job's own rules.

    Args:
        groups: a key-group table (``records.group_table``).
        earlier: the rows of each of :data:`SOURCES` (None or absent: none).
        fingerprint: this run's fingerprint (``Provenance.fingerprint``).
        greedy: whether the task samples at temperature 0 (same prompt, same answer).
    """
    groups = _first_per_pair(groups)
    reusable_dead = _DETERMINISTIC if greedy else (Reason.PROMPT_TOO_LONG,)
    reused, resumed_predictions, answered = _matches(groups, earlier, ("previous", "checkpoint"), fingerprint, None)
    rest = groups.filter(pc.invert(answered))
    dead, resumed_dead, answered_dead = _matches(rest, earlier, ("previous_dead", "checkpoint_dead"), fingerprint, reusable_dead)
    return ReuseSplit(rest.filter(pc.invert(answered_dead)), reused, dead, resumed_predictions + resumed_dead)


def _pairs(table: pa.Table) -> pa.Table:
    return pa.table({"key": table.column("key"), "language": pc.fill_null(table.column("language"), _NO_LANGUAGE)})


def _first_per_pair(groups: pa.Table) -> pa.Table:
    pairs = _pairs(groups).append_column("position", pa.array(np.arange(groups.num_rows, dtype=np.int64)))
    first = pairs.group_by(["key", "language"], use_threads=False).aggregate([("position", "min")]).column("position_min")
    return groups if len(first) == groups.num_rows else groups.take(pa.array(np.sort(first.to_numpy())))


def _matches(
    groups: pa.Table, earlier: Mapping[str, pa.Table | None], sources: tuple[str, str], fingerprint: str, reasons: tuple[str, ...] | None
) -> tuple[pa.Table, int, pa.Array]:
    """The earlier rows (of ``sources``, in order) answering ``groups``: the rows, how many came from the second source, and
    which groups they answer."""
    candidates = []
    for order, name in enumerate(sources):
        table = earlier.get(name)
        if table is None or table.num_rows == 0 or groups.num_rows == 0:
            continue
        usable = pc.and_kleene(pc.is_valid(table.column("key")), pc.equal(table.column("fingerprint"), fingerprint))
        if reasons is not None:
            usable = pc.and_kleene(usable, pc.is_in(table.column("reason"), value_set=pa.array(reasons, pa.string())))
        rows = np.flatnonzero(pc.fill_null(usable, False).to_numpy(zero_copy_only=False))
        if len(rows):
            pairs = _pairs(table.take(rows)).append_column("at", pa.array(rows + (order << 40), pa.int64()))
            candidates.append(pairs)
    none = pa.array(np.zeros(groups.num_rows, dtype=bool))
    if not candidates:
        return _empty(earlier, sources), 0, none
    wanted = _pairs(groups).append_column("group", pa.array(np.arange(groups.num_rows, dtype=np.int64)))
    joined = wanted.join(pa.concat_tables(candidates), ["key", "language"], join_type="inner", use_threads=False)
    if joined.num_rows == 0:
        return _empty(earlier, sources), 0, none
    best = joined.group_by("group", use_threads=False).aggregate([("at", "min")])
    at = best.column("at_min").to_numpy()
    group = best.column("group").to_numpy()
    pieces, resumed = [], 0
    for order, name in enumerate(sources):
        mine = (at >> 40) == order
        if not mine.any():
            continue
        rows = earlier[name].take(pa.array(at[mine] & ((1 << 40) - 1)))
        # The answer and its provenance stay as they were; only the corpus count is today's.
        rows = rows.set_column(rows.schema.get_field_index("source_rows"), "source_rows", groups.column("source_rows").take(group[mine]))
        pieces.append(rows)
        resumed += int(mine.sum()) if order else 0
    answered = np.zeros(groups.num_rows, dtype=bool)
    answered[group] = True
    return pa.concat_tables(pieces, promote_options="permissive"), resumed, pa.array(answered)


def _empty(earlier: Mapping[str, pa.Table | None], sources: tuple[str, str]) -> pa.Table:
    for name in sources:
        if earlier.get(name) is not None:
            return earlier[name].slice(0, 0)
    return pa.table({})


class SplitBuckets(beam.DoFn):
    """Cuts a table with a ``key`` column into one ``(bucket, (source, rows))`` pair per key-hash bucket it touches.

    Takes ``(source, table)``, or a bare table of ``source`` when one is given. With
    ``spill``, ``rows`` is the name of a file holding them (:mod:`bulkinfer.transforms.spill`).
    """

    def __init__(self, fingerprint: str | None = None, source: str | None = None, buckets: int = KEY_BUCKETS, spill: str | None = None):
        self._fingerprint = fingerprint
        self._source = source
        self._buckets = buckets
        self._spill = spill
        self._writer = SpillWriter(spill)

    def start_bundle(self) -> None:
        self._writer = SpillWriter(self._spill)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for spilled in self._writer.finish():
            (bucket, source), rows = spilled.value
            yield spilled.with_value((bucket, (source, rows)))

    def process(self, item: pa.Table | tuple[str, pa.Table]) -> Iterator[tuple[int, tuple[str, pa.Table]]]:
        source, table = (self._source, item) if self._source is not None else item
        keep = pc.is_valid(table.column("key"))
        if self._fingerprint is not None:  # other fingerprints answer nothing here: not worth shipping
            keep = pc.and_kleene(keep, pc.equal(table.column("fingerprint"), self._fingerprint))
        table = table.filter(pc.fill_null(keep, False))
        if table.num_rows == 0:
            return
        for bucket, rows in split_by(table, key_buckets(table.column("key"), self._buckets)):
            for (spilled_bucket, spilled_source), spilled in self._writer.add((bucket, source), rows):
                yield spilled_bucket, (spilled_source, spilled)


class _Split(beam.DoFn):
    """Joins one bucket's groups with the earlier results in it (:func:`split_by_reuse`).

    Takes ``(bucket, [(source, table), ...])`` (the source ``"groups"`` or one of
    :data:`SOURCES`), or a bare key-group table when there are no earlier results.
    Yields the groups to generate; the places of reused rows go out per earlier file,
    as ``(file, picks)`` on the ``picks`` output, for :class:`_CopyRows` (with ``spill``,
    ``picks`` is a file's name). Tables of the input may be file names of :class:`SplitBuckets`.
    """

    def __init__(self, fingerprint: str, greedy: bool, spill: str | None = None):
        self._fingerprint = fingerprint
        self._greedy = greedy
        self._spill = spill
        self._writer = SpillWriter(spill)
        self._resumed = Metrics.counter(METRICS_NAMESPACE, "resumed_from_checkpoints")

    def start_bundle(self) -> None:
        self._writer = SpillWriter(self._spill)

    def finish_bundle(self) -> Iterator[Any]:
        for spilled in self._writer.finish():
            yield pvalue.TaggedOutput(_PICKS, spilled)

    def process(self, item: pa.Table | tuple[int, Iterable[tuple[str, pa.Table]]]) -> Iterator[Any]:
        if isinstance(item, pa.Table):  # nothing earlier to join with
            if item.num_rows:
                yield _first_per_pair(item)
            return
        tables: dict[str, list[pa.Table]] = {}
        for source, table in item[1]:
            tables.setdefault(source, []).extend(read_spilled([table]))
        # No groups: only earlier results, whose keys left the corpus, so they leave the table too.
        if not tables.get("groups"):
            return
        groups = pa.concat_tables(tables["groups"])
        earlier = {name: pa.concat_tables(tables[name], promote_options="permissive") if name in tables else None for name in SOURCES}
        split = split_by_reuse(groups, earlier, self._fingerprint, self._greedy)
        self._resumed.inc(split.resumed)
        if split.to_generate.num_rows:
            yield split.to_generate
        for picks in (split.reused, split.reused_dead):
            if picks.num_rows:
                for file, rows in _by_file(picks):
                    for spilled in self._writer.add(file, rows):
                        yield pvalue.TaggedOutput(_PICKS, spilled)


_PICKS = "picks"


_JOIN_COLUMNS = ("key", "language", "fingerprint", "reason", "source_rows")
"""What the reuse rules read of an earlier result; the rest of a reused row is copied from its file (:class:`_CopyRows`)."""


class _ReadJoinColumns(beam.DoFn):
    """Reads the join columns of one earlier result file, a row group at a time, each row marked with its file and place in
    it; yields ``(source, rows)``."""

    def process(self, item: tuple[int, str, str]) -> Iterator[tuple[str, pa.Table]]:
        file, source, path = item
        # Memory holds one row group's join columns, not the file's: a version may be one large file.
        with layout.parquet_file(path) as parquet:
            names = parquet.schema_arrow.names
            if parquet.metadata.num_rows == 0 or "key" not in names or "fingerprint" not in names:
                return
            columns = [c for c in _JOIN_COLUMNS if c in names]
            start = 0
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                if "language" not in names:  # written before the column existed
                    table = table.append_column("language", pa.nulls(table.num_rows, pa.string()))
                table = table.append_column("file", pa.repeat(pa.scalar(file, pa.int32()), table.num_rows))
                yield source, table.append_column("row", pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)))
                start += table.num_rows


class _CopyRows(beam.DoFn):
    """Copies the reused rows of one earlier file, whole, with today's ``source_rows``, a row group at a time.

    Rows of the files numbered in ``dead_files`` (dead letters) go out on the ``reused_dead`` output.
    """

    def __init__(self, paths: Sequence[str], dead_files: Iterable[int] = ()):
        self._paths = list(paths)
        self._dead = frozenset(dead_files)

    def process(self, item: tuple[int, Iterable[pa.Table | str]]) -> Iterator[pa.Table]:
        file, picks = item
        picks = pa.concat_tables(read_spilled(picks)).sort_by("row")
        rows = picks.column("row").to_numpy()
        path = self._paths[file]
        # Memory holds one row group of the file, not the file: a version may be one large file.
        with layout.parquet_file(path) as parquet:
            ends = np.cumsum([parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
            group_of = np.searchsorted(ends, rows, side="right")
            for group, chosen in split_by(picks, group_of):
                start = ends[group] - parquet.metadata.row_group(group).num_rows
                taken = parquet.read_row_group(group).take(pa.array(chosen.column("row").to_numpy() - start))
                taken = taken.set_column(taken.schema.get_field_index("source_rows"), "source_rows", chosen.column("source_rows"))
                yield pvalue.TaggedOutput(REUSED_DEAD, taken) if file in self._dead else taken


def _files(directory: str | None, kind: str) -> list[str]:
    return sorted(fs.match(fs.join(directory, f"{kind}-*.parquet"))) if directory else []


class ReuseResults(beam.PTransform):
    """Splits key groups into those that need generating and results reused from earlier work.

    Earlier work is the published version (``previous``, ``previous_dead``) and the
    chunks that runs checkpointed while generating (``checkpoint``,
    ``checkpoint_dead``), including those of a run that was killed. A key is reused
    when one of them holds a prediction with the same fingerprint (task spec, model,
    sampling, engine version) and the same language (which picks the examples): the
    answer would be the same, so the engine is not asked again. A key whose earlier
    result was a deterministic dead letter (``prompt_too_long``; ``unparseable_output``
    under greedy decoding) with the same fingerprint and language keeps that dead letter.
    A key fanned out into target languages is reused per language: a rerun that adds a
    target generates only the new (key, language) pairs.

    Works a key-hash bucket at a time: the groups and the earlier results are cut into
    buckets as Arrow tables, joined per bucket (:func:`split_by_reuse`), so neither side
    is shuffled row by row. Applied to key-group tables; returns ``(to_generate,
    reused_predictions, reused_dead_letters)``, all tables.
    """

    def __init__(self, fingerprint: str, greedy: bool, published: str | None, checkpoints: str, spill: str | None = None):
        """Args:
        fingerprint: this run's fingerprint (``Provenance.fingerprint``).
        greedy: whether the task samples at temperature 0 (same prompt, same answer).
        published: the published version's directory to reuse from, or None (first run, ``--full``).
        checkpoints: the checkpoint directory (or glob of directories) to resume from.
        spill: a directory where the buckets and picks wait for their shuffle, so it carries file names
            (:mod:`bulkinfer.transforms.spill`); None: the tables cross the shuffles themselves.
        """
        super().__init__()
        self._spill = spill
        self._fingerprint = fingerprint
        self._greedy = greedy
        self._directories = {"previous": published, "checkpoint": checkpoints}

    def expand(self, groups: beam.PCollection) -> tuple[beam.PCollection, ...]:
        # Only the columns the rules read go through the join (a small share of a row's bytes); reused
        # rows are then copied whole, a row group of an earlier file at a time, not the version at once.
        files = [
            (name, path)
            for name in SOURCES
            for path in _files(self._directories[name.partition("_")[0]], DEAD_LETTER if name.endswith("_dead") else PREDICTIONS)
        ]
        split_fn = _Split(self._fingerprint, self._greedy, self._spill)
        if not files:  # a first run (or --full without checkpoints): every group is to generate, nothing is shuffled
            split = groups | "Split" >> beam.ParDo(split_fn).with_outputs(_PICKS, main="to_generate")
        else:
            earlier = (
                groups.pipeline
                | "EarlierFiles" >> beam.Create([(number, name, path) for number, (name, path) in enumerate(files)])
                | "ReadEarlier" >> beam.ParDo(_ReadJoinColumns())
                | "BucketEarlier" >> beam.ParDo(SplitBuckets(self._fingerprint, spill=self._spill))
            )
            split = (
                (groups | "BucketGroups" >> beam.ParDo(SplitBuckets(source="groups", spill=self._spill)), earlier)
                | "Sides" >> beam.Flatten()
                | "JoinOnBucket" >> beam.GroupByKey()
                | "Split" >> beam.ParDo(split_fn).with_outputs(_PICKS, main="to_generate")
            )
        dead_files = [number for number, (name, _) in enumerate(files) if name.endswith("_dead")]
        copied = (
            split[_PICKS]
            | "GroupByFile" >> beam.GroupByKey()
            | "CopyRows" >> beam.ParDo(_CopyRows([path for _, path in files], dead_files)).with_outputs(REUSED_DEAD, main=REUSED)
        )
        return split.to_generate, copied[REUSED], copied[REUSED_DEAD]


def _by_file(picks: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """The reused rows' places, by the file that holds them."""
    picks = picks.select(["file", "row", "source_rows"])
    return split_by(picks, picks.column("file").to_numpy())
