"""NormalizeKeys: one key per query, bad rows dead-lettered, duplicates merged before the GPU."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from bulkinfer.errors import Reason
from bulkinfer.format.records import METRICS_NAMESPACE, Provenance, QueryGroup, dead_letter
from bulkinfer.keys import normalize_key
from bulkinfer.tasks.languages import normalize_language

DEAD = "dead"


class KeyRow(beam.DoFn):
    """Keys one corpus row with ``normalize_key``, or tags it as a dead letter with its reason.

    Public so that ``bulkinfer run --dry_run`` keys a corpus by the job's own rules.
    """

    def __init__(self, query_column: str, fields: Sequence[str], provenance: Provenance, language_column: str | None = None):
        self._query_column = query_column
        self._fields = tuple(fields)
        self._provenance = provenance
        self._language_column = language_column
        self._unrecognised = Metrics.counter(METRICS_NAMESPACE, "language_values_unrecognised")

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        query, key, failure = self.diagnose(row)
        language = self._language(row)
        if failure:
            dead = dead_letter(
                reason=failure[0],
                message=failure[1],
                stage="normalize_keys",
                query=query,
                row=row,
                provenance=self._provenance,
                language=language,
            )
            yield pvalue.TaggedOutput(DEAD, dead)
        else:
            fields = tuple((name, row[name]) for name in self._fields)
            # Rank spellings so every run keeps the same one: the key itself first,
            # then spellings with tidy whitespace, then the smallest.
            rank = (query != key, " ".join(query.split()) != query, query, json.dumps(fields, default=repr) if fields else "")
            yield key, ((rank, query, fields), language)

    def _language(self, row: dict[str, Any]) -> str | None:
        if self._language_column is None:
            return None
        value = row.get(self._language_column)
        language = normalize_language(value)
        if language is None and value is not None and not (isinstance(value, str) and value.strip().lower() in ("", "und")):
            self._unrecognised.inc()  # e.g. "english" or "xx": the key's other rows, or detection, decide
        return language

    def diagnose(self, row: dict[str, Any], check_fields: bool = True) -> tuple[Any, str, tuple[str, str] | None]:
        """Returns the query text, its key, and why the row cannot be used (None if it can).

        Args:
            row: the corpus row.
            check_fields: also refuse a row whose template column is null.
        """
        column = self._query_column
        query = row.get(column)
        if isinstance(query, bytes):
            try:
                query = query.decode("utf-8")
            except UnicodeDecodeError as e:
                return query, "", (Reason.INVALID_UTF8, f"column {column!r} is not valid UTF-8 ({e.reason} at byte {e.start})")
        if query is None:
            return query, "", (Reason.NULL_QUERY, f"column {column!r} is null")
        if not isinstance(query, str):
            return query, "", (Reason.NOT_A_STRING, f"column {column!r} holds {type(query).__name__}, not text")
        key = normalize_key(query)
        if not key:
            return query, key, (Reason.EMPTY_QUERY, "query is empty after normalisation (blank, whitespace or control characters)")
        missing = [name for name in self._fields if row.get(name) is None] if check_fields else []
        if missing:
            return query, key, (Reason.MISSING_FIELD, f"template column {missing[0]!r} is null")
        return query, key, None


class PickRepresentative(beam.CombineFn):
    """Counts the rows of a key, keeps its best-ranked spelling and counts its rows' languages."""

    def create_accumulator(self) -> tuple[int, Any, dict[str, int]]:
        return 0, None, {}

    def add_input(self, acc: tuple[int, Any, dict[str, int]], value: tuple[tuple, str | None]) -> tuple[int, Any, dict[str, int]]:
        count, best, languages = acc
        rep, language = value
        if language is not None:
            languages[language] = languages.get(language, 0) + 1
        return count + 1, rep if best is None or rep[0] < best[0] else best, languages

    def merge_accumulators(self, accs: Any) -> tuple[int, Any, dict[str, int]]:
        accs = list(accs)  # Beam may pass a one-shot iterator
        reps = [best for _, best, _ in accs if best is not None]
        languages: dict[str, int] = {}
        for _, _, counts in accs:
            for language, n in counts.items():
                languages[language] = languages.get(language, 0) + n
        return sum(count for count, _, _ in accs), min(reps, key=lambda rep: rep[0]) if reps else None, languages

    def extract_output(self, acc: tuple[int, Any, dict[str, int]]) -> tuple[int, Any, str | None]:
        count, best, languages = acc
        # The commonest language among the key's rows; ties go to the smaller code, so every run agrees.
        language = min(languages.items(), key=lambda kv: (-kv[1], kv[0]))[0] if languages else None
        return count, best, language


def to_query_group(item: tuple[str, tuple[int, Any, str | None]]) -> QueryGroup:
    """The merged key (its row count, representative spelling and language) as a :class:`QueryGroup`."""
    key, (count, (_, query, fields), language) = item
    return QueryGroup(key=key, query=query, fields=fields, source_rows=count, language=language)


class NormalizeKeys(beam.PTransform):
    """Keys every row with ``normalize_key`` and merges rows that share a key.

    Takes ``pyarrow.Table`` s of corpus rows (``ReadQueries``) and works a table at a
    time (:mod:`bulkinfer.transforms.key_tables`): the normaliser runs once per distinct
    spelling, and spellings merge per key-hash bucket with pyarrow, by the rules of
    :class:`KeyRow` and :class:`PickRepresentative` (which ``--dry_run`` uses row by row).

    Returns ``(groups, dead)``: key-group tables (one row per distinct key, the
    :class:`QueryGroup` fields as columns, ``records.group_table``; one table per
    key-hash bucket), and tables of dead-letter rows, one row for every input row
    without a usable query (null, not text, empty after normalisation, or a null
    template column). Merging happens here, before any prompt is built, so a query in 1,000
    spellings costs one generation. With a language column, a key's language is the
    commonest recognised code among its rows (ties: the smaller code); rows with a
    null or unrecognised value do not vote, and a key with no vote keeps ``None``.
    """

    def __init__(
        self,
        query_column: str,
        fields: Sequence[str],
        provenance: Provenance,
        language_column: str | None = None,
        spill: str | None = None,
    ):
        """Args:
        query_column: the column holding the query text.
        fields: other columns the prompt template reads.
        provenance: provenance columns for dead-letter rows.
        language_column: the column holding each row's language code, if any.
        spill: a directory where the key buckets wait for their merge, so the shuffle carries file names
            (:mod:`bulkinfer.transforms.spill`); None: the tables cross the shuffle themselves.
        """
        super().__init__()
        self._spill = spill
        self._query_column = query_column
        self._fields = fields
        self._provenance = provenance
        self._language_column = language_column

    def expand(self, tables: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        from bulkinfer.transforms.key_tables import KeyTable, ToGroups

        key_table = KeyTable(self._query_column, self._fields, self._provenance, self._language_column, spill=self._spill)
        keyed = tables | "KeyRows" >> beam.ParDo(key_table).with_outputs(DEAD, main="keyed")
        groups = keyed.keyed | "MergeSpellings" >> beam.GroupByKey() | "ToGroups" >> beam.ParDo(ToGroups(self._fields))
        return groups, keyed[DEAD]
