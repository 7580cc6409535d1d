"""Task specs: what to ask the model and how to read its answer, as data.

``spec`` (the validated YAML spec: instruction, examples, sampling, parser,
gates), ``prompts`` (rendering a key into a completion prompt or chat turns),
``parsing`` (raw output into a typed answer or a dead-letter reason) and
``languages`` (language codes and detection of a key's language). The built-in
specs ship in ``builtin/``. It may import :mod:`bulkinfer.keys` and
:mod:`bulkinfer.errors` only: no Beam, no engine, no table.
"""
