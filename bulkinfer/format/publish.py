"""Publishing a written version: the gate check, the lookup store, the ``CURRENT`` swap, cleanup.

The order matters to readers: the store is built while they still see the previous
version, ``CURRENT`` moves in one rename, and only then are checkpoints and old
versions deleted. The caller holds the table's lock (:class:`bulkinfer.format.lock.TableLock`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bulkinfer.errors import GateError
from bulkinfer.format import fs, layout
from bulkinfer.lookup.match import write_match_index
from bulkinfer.lookup.store import write_store

_LOG = logging.getLogger(__name__)


def clear_leftovers(vdir: str) -> None:
    """Removes an unpublished version directory of the same run id (left by a run that died before publishing)."""
    if fs.exists(vdir):
        # Never published, so no reader can have it open: safe to replace.
        _LOG.warning("replacing unpublished leftovers of this run id in %s", vdir)
        fs.delete([vdir])


def check_gates(manifest: dict[str, Any], table: str, task_flag: str, previous: str | None) -> None:
    """Refuses a version whose manifest records a failed quality gate.

    Args:
        manifest: the version's manifest (``gates.failed``).
        table: the table directory.
        task_flag: the ``--task`` the gates were set in, for the message.
        previous: the version the table still serves.

    Raises:
        GateError: naming the first failed gate, its value and threshold, where the
            version was kept and what the table still serves.
    """
    failed = manifest["gates"]["failed"]
    if not failed:
        return
    first, version = failed[0], manifest["version"]
    where = "always on" if first["gate"] == "min_keys" else f"set in --task {task_flag}, gates.{first['gate']}"
    raise GateError(
        f"quality gate {first['gate']} failed: {first['value']} against threshold {first['threshold']} "
        f"({where}); version {version} kept unpublished "
        f"in {layout.version_dir(table, version)}; {table} still serves {previous or 'nothing'}"
        + (f"; {len(failed) - 1} more gate(s) failed, see manifest.json" if len(failed) > 1 else ""),
        manifests={None: manifest},
    )


def drop_checkpoints(table: str) -> None:
    """Deletes the checkpoints of runs whose results the published version now holds (or superseded)."""
    checkpoints = fs.join(table, layout.CHECKPOINTS)
    if fs.exists(checkpoints):
        fs.delete([checkpoints])


def publish_version(table: str, version: str, keep: int) -> list[str]:
    """Builds the version's lookup store and match index, points ``CURRENT`` at it, then cleans up.

    Args:
        table: the table directory.
        version: a complete version whose gates passed.
        keep: versions to keep; older ones (never the published one) are deleted.

    Returns:
        The names of the versions pruned.
    """
    # Lookups open the version's store, not its Parquet: build it while readers still see the previous version.
    # The two builds share nothing and spend much of their time outside the GIL (SQLite, Arrow): side by side.
    # Measured at 1M rows: 6.4 s instead of 9.4, and the run's peak 1.78 GB instead of 1.68 GB.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkinfer-store") as pool:
        store = pool.submit(write_store, table, version)
        write_match_index(table, version)
        store.result()
    # The files must still read and hold what the manifest counts: CURRENT never names a damaged version.
    layout.verify_version(table, version)
    layout.publish(table, version)
    # Published: every checkpointed result is in the table now (or was superseded).
    drop_checkpoints(table)
    return layout.prune_versions(table, keep=keep)
