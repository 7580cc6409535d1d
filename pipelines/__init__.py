"""Jobs, installed as ``bulkinfer.pipelines``: one file per job, and the planning they share.

``cache_job`` holds the job's flags, ``run(argv=None, test_pipeline=None,
model_handler=None)`` and the wiring of its stages, nothing else. ``plan`` checks
flags, task, model, adapters and corpus before any work and builds the engine
handler; ``run_tables`` runs the wired pipeline per output table under its lock and
publishes what passes the gates; ``summary`` writes the manifest from the finished
pipeline. Jobs may
import everything in the package; nothing but the CLI and the bench imports them.
"""
