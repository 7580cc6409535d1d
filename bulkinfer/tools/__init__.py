"""Offline tools around published tables: the commands a data engineer runs by hand.

``compare`` (may model B replace model A?), ``export_training`` (a version's
answers as a fine-tuning set) and ``bench`` (generation throughput: raw vLLM,
Beam's handler, the job, its engine stage). They may import everything else in
the package, and nothing imports them but the CLI.
"""
