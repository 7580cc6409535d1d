"""bulkinfer: offline bulk LLM inference into versioned, looked-up prediction tables.

    >>> from bulkinfer import open_table
    >>> open_table("tables/synonyms").get("Covid Vaccine")

Importing the package loads nothing heavy: :func:`open_table` pulls in the lookup
side only (SQLite and JSON, no Beam, vLLM or pyarrow); the job lives in
:mod:`bulkinfer.pipelines`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PredictionTable", "open_table"]

if TYPE_CHECKING:
    from bulkinfer.lookup.table import PredictionTable, open_table


def __getattr__(name: str) -> Any:
    # PEP 562: the lookup API is imported on first use, so `import bulkinfer.keys` stays as light as it is.
    if name in __all__:
        from bulkinfer.lookup import table

        return getattr(table, name)
    raise AttributeError(f"module 'bulkinfer' has no attribute {name!r}")
