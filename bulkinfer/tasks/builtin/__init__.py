"""The built-in task specs (``synonyms``, ``classify``, ...), loaded by name with :func:`bulkinfer.tasks.spec.load_task`."""
