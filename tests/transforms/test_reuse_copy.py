"""Reused rows are copied whole from their file, a row group at a time, with today's source_rows."""

import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer.transforms.reuse_results import _CopyRows


def test_rows_from_several_row_groups_come_back_whole_with_new_counts(tmp_path):
    path = tmp_path / "predictions-0.parquet"
    table = pa.table(
        {"key": [f"k{i}" for i in range(10)], "raw_output": [f"answer {i}" for i in range(10)], "source_rows": list(range(10))}
    )
    pq.write_table(table, path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    picks = [
        pa.table({"file": pa.array([0, 0], pa.int32()), "row": [9, 0], "source_rows": [90, 0]}),
        pa.table({"file": pa.array([0, 0], pa.int32()), "row": [4, 5], "source_rows": [40, 50]}),
    ]
    copied = pa.concat_tables(_CopyRows([str(path)]).process((0, picks))).sort_by("key").to_pylist()
    assert copied == [
        {"key": "k0", "raw_output": "answer 0", "source_rows": 0},
        {"key": "k4", "raw_output": "answer 4", "source_rows": 40},
        {"key": "k5", "raw_output": "answer 5", "source_rows": 50},
        {"key": "k9", "raw_output": "answer 9", "source_rows": 90},
    ]
