"""ParsePredictions: raw generations into typed, provenance-carrying table rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue

from bulkinfer.errors import Reason
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, Generation, Provenance, dead_letter, prediction_schema
from bulkinfer.tasks.parsing import OutputParser, compile_parser
from bulkinfer.tasks.spec import TaskSpec

DEAD = "dead"


class _Parse(beam.DoFn):
    def __init__(self, task: TaskSpec, provenance: Provenance):
        self._task = task
        self._provenance = provenance
        self._schema = prediction_schema(task)
        self._parser: OutputParser | None = None

    def setup(self) -> None:
        self._parser = compile_parser(self._task)

    def process(self, generations: Sequence[Generation]) -> Iterator[Any]:
        done = [g for g in generations if g.error_reason is None]
        dead = [self._dead(g, g.error_reason, g.error_message, "generate") for g in generations if g.error_reason is not None]
        if done:
            # Several answers (sampling.n > 1) are one answer per line: the list parser splits on
            # line breaks too, so their items come out unioned and deduplicated, first occurrence first.
            raws = ["\n".join(g.texts) if g.texts else g.text for g in done]
            keys = [g.request.key for g in done]
            values, errors = self._parser.parse_column(raws, keys)
            for i, message in errors.items():
                dead.append(self._dead(done[i], Reason.UNPARSEABLE_OUTPUT, message, "parse_predictions"))
            if errors:
                kept = np.ones(len(done), bool)
                kept[list(errors)] = False
                values = values.filter(pa.array(kept))
                done = [g for g, k in zip(done, kept, strict=True) if k]
                raws = [r for r, k in zip(raws, kept, strict=True) if k]
            if done:
                yield self._table(done, raws, values)
        if dead:
            yield pvalue.TaggedOutput(DEAD, pa.Table.from_pylist(dead, schema=DEAD_LETTER_SCHEMA))

    def _table(self, done: list[Generation], raws: list[str], values: pa.Array) -> pa.Table:
        requests = [g.request for g in done]
        columns = {
            "key": [r.key for r in requests],
            "query": [r.query for r in requests],
            "language": [r.language for r in requests],
            "raw_output": raws,
            "source_rows": [r.source_rows for r in requests],
            "prompt_tokens": [g.prompt_tokens for g in done],
            "output_tokens": [g.output_tokens for g in done],
            "finish_reason": [g.finish_reason for g in done],
        }
        n = len(done)
        arrays = []
        for f in self._schema:
            if f.name == self._task.output_column:
                arrays.append(values.cast(f.type))
            elif f.name in columns:
                arrays.append(pa.array(columns[f.name], f.type))
            else:  # provenance: the same on every row
                arrays.append(pa.repeat(pa.scalar(self._provenance.columns()[f.name], f.type), n))
        return pa.Table.from_arrays(arrays, schema=self._schema)

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
