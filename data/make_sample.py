"""Writes data/sample_queries.parquet: the bundled sample corpus of `make run`.

Real corpora repeat queries in many spellings and carry junk rows; so does this one:
variant spellings of the same query (they cost one generation), several languages,
and a few rows that end in the dead-letter table (null, empty, whitespace-only).
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

QUERIES = [
    "covid vaccine",
    "Covid Vaccine",
    "  COVID   vaccine ",
    "ＣＯＶＩＤ ｖａｃｃｉｎｅ",
    "covid\tvaccine",
    "cheap flights",
    "  cheap   FLIGHTS ",
    "Cheap Flights",
    "flu symptoms",
    "running shoes",
    "used cars",
    "weather tomorrow",
    "pizza near me",
    "mortgage calculator",
    "python tutorial",
    "hotel deals",
    "wireless headphones",
    "yoga for beginners",
    "vegan recipes",
    "car rental",
    "phone charger",
    "dentist",
    "coronavirus impfung",
    "vacuna covid",
    "vaccin covid",
    "grippe symptome",
    "billige flüge",
    "vuelos baratos",
    "中古車",
    "кроссовки",
    None,
    "",
    "   ",
    "\x00\x07",
]


def main() -> None:
    path = Path(__file__).with_name("sample_queries.parquet")
    table = pa.table({"query": pa.array(QUERIES, pa.string()), "market": ["us"] * len(QUERIES)})
    pq.write_table(table, path)
    print(f"wrote {path} ({table.num_rows} rows)")


if __name__ == "__main__":
    main()
