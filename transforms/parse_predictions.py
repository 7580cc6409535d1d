"""ParsePredictions: raw generations into typed, provenance-carrying table rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from bulkinfer.errors import Reason
from bulkinfer.format.records import Generation, Provenance, dead_letter
from bulkinfer.tasks.parsing import OutputParser, compile_parser
from bulkinfer.tasks.spec import TaskSpec

DEAD = "dead"


class _Parse(beam.DoFn):
    def __init__(self, task: TaskSpec, provenance: Provenance):
        self._task = task
        self._provenance = provenance
        self._parser: OutputParser | None = None

    def setup(self) -> None:
        self._parser = compile_parser(self._task)

    def process(self, generation: Generation) -> Iterator[Any]:
        request = generation.request
        if generation.error_reason is not None:
            yield self._dead(generation, generation.error_reason, generation.error_message, "generate")
            return
        # Several answers (sampling.n > 1) are one answer per line: the list parser splits on
        # line breaks too, so their items come out unioned and deduplicated, first occurrence first.
        raw = "\n".join(generation.texts) if generation.texts else generation.text
        parsed = self._parser.parse(raw, request.key)
        if parsed.error is not None:
            yield self._dead(generation, Reason.UNPARSEABLE_OUTPUT, parsed.error, "parse_predictions")
            return
        yield {
            "key": request.key,
            "query": request.query,
            "language": request.language,
            self._task.output_column: parsed.value,
            "raw_output": raw,
            "source_rows": request.source_rows,
            "prompt_tokens": generation.prompt_tokens,
            "output_tokens": generation.output_tokens,
            "finish_reason": generation.finish_reason,
            **self._provenance.columns(),
        }

    def _dead(self, generation: Generation, reason: str, message: str, stage: str) -> pvalue.TaggedOutput:
        request = generation.request
        return pvalue.TaggedOutput(
            DEAD,
            dead_letter(
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
            ),
        )


class ParsePredictions(beam.PTransform):
    """Parses each generation into the task's typed output.

    Returns ``(predictions, dead)``: prediction rows (key, query, typed output,
    raw text, token counts, provenance) and dead-letter rows for generations that
    failed or could not be parsed, each with its reason code.
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
