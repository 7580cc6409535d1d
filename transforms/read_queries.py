"""ReadQueries: the query corpus from Parquet, through Beam's Parquet IO."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam


class ReadQueries(beam.PTransform):
    """Reads the columns a job needs from Parquet files, one ``pyarrow.Table`` per row group.

    Paths go through Beam's FileSystems, so ``gs://`` and ``s3://`` patterns work on
    distributed runners; only the named columns are read.
    """

    def __init__(self, file_pattern: str, columns: Sequence[str]):
        """Args:
        file_pattern: a Parquet file, directory glob or ``gs://`` / ``s3://`` pattern.
        columns: the columns to read (the query column and any template columns).
        """
        super().__init__()
        self._file_pattern = file_pattern
        self._columns = list(columns)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadParquet" >> beam.io.ReadFromParquetBatched(self._file_pattern, columns=self._columns)
