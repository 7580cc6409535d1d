"""FanOutLanguages: one group per key and target language, for tasks with ``target_languages``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import apache_beam as beam

from bulkinfer.format.records import QueryGroup


def fan_out(group: QueryGroup, target_languages: Sequence[str]) -> Iterator[QueryGroup]:
    """The key once per target language, that language being the group's language."""
    for language in target_languages:
        yield dataclasses.replace(group, language=language)


class FanOutLanguages(beam.PTransform):
    """Turns each :class:`QueryGroup` into one per target language of the task.

    The group's language picks the prompt (``instruction_by_language`` and
    ``examples_by_language``, else the fallback naming the language), so every later
    stage works per key and language: reuse of earlier results, checkpoints, dead
    letters, the prediction rows and the row accounting. The language the key's rows
    came in is not kept: what a fanned-out prompt asks for is its target language.
    Each group keeps the key's ``source_rows``; the manifest's accounting counts every
    input row once per target language.
    """

    def __init__(self, target_languages: Sequence[str]):
        """Args:
        target_languages: the task's ``target_languages`` (canonical codes, each once).
        """
        super().__init__()
        self._targets = tuple(target_languages)

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        return groups | "PerTargetLanguage" >> beam.FlatMap(fan_out, self._targets)
