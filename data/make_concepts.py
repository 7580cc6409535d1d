"""Writes data/reference_concepts.parquet: the concepts `make run` fans out into many languages.

The reference case: a few concepts, each asked for in every target language of the
``synonyms_worldwide`` task (``make run`` narrows it to a dozen with ``--target_languages``),
so that live queries in any of those languages match back to the concept.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CONCEPTS = ["covid vaccine", "cheap flights", "used cars"]


def main() -> None:
    path = Path(__file__).with_name("reference_concepts.parquet")
    table = pa.table({"query": pa.array(CONCEPTS, pa.string())})
    pq.write_table(table, path)
    print(f"wrote {path} ({table.num_rows} rows)")


if __name__ == "__main__":
    main()
