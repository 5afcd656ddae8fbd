"""Orchestration: plans, engines, the shared pipeline stages and the recorder of results.

The closed sets of run options live here, importable without torch (the CLI's choices)."""

ENGINES = ("local", "ray")
BANDWIDTHS = ("item", "batch")  # per-item bandwidth, or pooled over the batch as the authors do
