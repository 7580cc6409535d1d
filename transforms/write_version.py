"""WriteVersion: a version's prediction and dead-letter Parquet files."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from bulkinfer.format.layout import DEAD_LETTER, PREDICTIONS
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, conform


class WriteVersion(beam.PTransform):
    """Writes tables of prediction and dead-letter rows as ``predictions-*.parquet`` and ``dead_letter-*.parquet`` into a version directory.

    Beam's file sink writes shards to a temporary directory and renames them into
    place when the write finalises. The version becomes visible to readers only
    when the job then writes the manifest and swaps ``CURRENT``
    (``bulkinfer.format.layout.publish``), after the whole pipeline has succeeded.
    """

    def __init__(self, vdir: str, prediction_schema: pa.Schema):
        """Args:
        vdir: the version directory (local, ``gs://`` or ``s3://``).
        prediction_schema: the task's prediction schema (``records.prediction_schema``).
        """
        super().__init__()
        self._vdir = vdir
        self._schema = prediction_schema

    def expand(self, tables: tuple[beam.PCollection, beam.PCollection]) -> tuple[beam.PCollection, beam.PCollection]:
        predictions, dead = tables
        written = (
            predictions
            | "ConformPredictions" >> beam.Map(conform, self._schema)
            | "WritePredictions" >> beam.io.WriteToParquetBatched(f"{self._vdir}/{PREDICTIONS}", self._schema, file_name_suffix=".parquet")
        )
        dead_written = (
            dead
            | "ConformDeadLetters" >> beam.Map(conform, DEAD_LETTER_SCHEMA)
            | "WriteDeadLetters"
            >> beam.io.WriteToParquetBatched(f"{self._vdir}/{DEAD_LETTER}", DEAD_LETTER_SCHEMA, file_name_suffix=".parquet")
        )
        return written, dead_written
