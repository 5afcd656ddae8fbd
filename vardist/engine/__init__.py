"""Orchestration: plans, engines, the shared pipeline stages and the recorder of results.

The closed sets of run options live here, importable without torch (the CLI's choices)."""

ENGINES = ("local", "ray")
BANDWIDTHS = ("item", "batch")  # per-item bandwidth, or pooled over the batch as the authors do
# Closed sets owned by lower layers, repeated so the CLI offers them as choices without importing
# torch; tests/test_bad_input.py checks each equals its owner's (vardist.models.sampling
# POOL_SAMPLINGS, vardist.models.var.generator AUTOCAST_MODES, vardist.api PRESETS,
# vardist.models.memory TEXT_DEVICES).
POOL_SAMPLINGS = ("iid", "authors")  # i.i.d. candidates, or the authors' narrowing VAR sampler
AUTOCAST_MODES = ("off", "fp16")     # VAR checkpoints: fp32, or run.py's fp16 autocast + TF32
PRESETS = ("authors",)               # the authors' run.py configuration in one flag
TEXT_DEVICES = ("cpu", "offload")    # Infinity's T5: on the CPU, or parked there between batches
