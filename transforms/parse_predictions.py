"""ParsePredictions: raw generations into typed, provenance-carrying table rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue

from bulkinfer.errors import Reason
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, Generation, Provenance, dead_letter, prediction_schema
from bulkinfer.tasks.parsing import OutputParser, compile_parser
from bulkinfer.tasks.spec import TaskSpec

DEAD = "dead"

_ROW = ("key", "query", "language", "output", "raw_output", "source_rows", "prompt_tokens", "output_tokens", "finish_reason")
"""The per-row columns of a prediction, as ``_Parse`` collects them (``output``: the task's output column)."""


class _Parse(beam.DoFn):
    def __init__(self, task: TaskSpec, provenance: Provenance):
        self._task = task
        self._provenance = provenance
        self._schema = prediction_schema(task)
        self._parser: OutputParser | None = None

    def setup(self) -> None:
        self._parser = compile_parser(self._task)

    def process(self, generations: Sequence[Generation]) -> Iterator[Any]:
        rows: list[tuple[Any, ...]] = []
        dead: list[dict[str, Any]] = []
        for generation in generations:
            request = generation.request
            if generation.error_reason is not None:
                dead.append(self._dead(generation, generation.error_reason, generation.error_message, "generate"))
                continue
            # Several answers (sampling.n > 1) are one answer per line: the list parser splits on
            # line breaks too, so their items come out unioned and deduplicated, first occurrence first.
            raw = "\n".join(generation.texts) if generation.texts else generation.text
            parsed = self._parser.parse(raw, request.key)
            if parsed.error is not None:
                dead.append(self._dead(generation, Reason.UNPARSEABLE_OUTPUT, parsed.error, "parse_predictions"))
                continue
            rows.append(
                (
                    request.key,
                    request.query,
                    request.language,
                    parsed.value,
                    raw,
                    request.source_rows,
                    generation.prompt_tokens,
                    generation.output_tokens,
                    generation.finish_reason,
                )
            )
        if rows:
            yield self._table(rows)
        if dead:
            yield pvalue.TaggedOutput(DEAD, pa.Table.from_pylist(dead, schema=DEAD_LETTER_SCHEMA))

    def _table(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        # The schema's own columns first (key ... finish_reason, in _ROW order), then the provenance, the same on every row.
        values = dict(zip(_ROW, zip(*rows, strict=True), strict=True))
        values |= {name: [value] * len(rows) for name, value in self._provenance.columns().items()}
        output = self._task.output_column
        return pa.Table.from_arrays(
            [pa.array(values["output" if f.name == output else f.name], f.type) for f in self._schema], schema=self._schema
        )

    def _dead(self, generation: Generation, reason: str, message: str, stage: str) -> dict[str, Any]:
        request = generation.request
        return dead_letter(
            reason=reason,
            message=message,
            stage=stage,
            key=request.key,
            query=request.query,
            row=dict(request.fields),
            raw_output=("\n".join(generation.texts) or generation.text) if generation.error_reason is None else None,
            source_rows=request.source_rows,
            provenance=self._provenance,
            language=request.language,
        )


class ParsePredictions(beam.PTransform):
    """Parses each list of generations into the task's typed output.

    Returns ``(predictions, dead)``: tables of prediction rows (key, query, typed
    output, raw text, token counts, provenance; ``records.prediction_schema``) and
    tables of dead-letter rows for generations that failed or could not be parsed,
    each with its reason code.
    """

    def __init__(self, task: TaskSpec, provenance: Provenance):
        """Args:
        task: the task spec (parser and output column).
        provenance: provenance columns for every row.
        """
        super().__init__()
        self._task = task
        self._provenance = provenance

    def expand(self, generations: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        parsed = generations | "Parse" >> beam.ParDo(_Parse(self._task, self._provenance)).with_outputs(DEAD, main="rows")
        return parsed.rows, parsed[DEAD]
