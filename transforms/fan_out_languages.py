"""FanOutLanguages: one group per key and target language, for tasks with ``target_languages``."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
import pyarrow as pa


def fan_out(groups: pa.Table, target_languages: Sequence[str]) -> pa.Table:
    """Every key of a key-group table once per target language, that language being the row's language."""
    at = groups.schema.get_field_index("language")
    return pa.concat_tables(
        groups.set_column(at, "language", pa.repeat(pa.scalar(language, pa.string()), groups.num_rows)) for language in target_languages
    )


class FanOutLanguages(beam.PTransform):
    """Turns each key of the key-group tables into one row per target language of the task.

    The row's language picks the prompt (``instruction_by_language`` and
    ``examples_by_language``, else the fallback naming the language), so every later
    stage works per key and language: reuse of earlier results, checkpoints, dead
    letters, the prediction rows and the row accounting. The language the key's rows
    came in is not kept: what a fanned-out prompt asks for is its target language.
    Each row keeps the key's ``source_rows``; the manifest's accounting counts every
    input row once per target language.
    """

    def __init__(self, target_languages: Sequence[str]):
        """Args:
        target_languages: the task's ``target_languages`` (canonical codes, each once).
        """
        super().__init__()
        self._targets = tuple(target_languages)

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        return groups | "PerTargetLanguage" >> beam.Map(fan_out, self._targets)
