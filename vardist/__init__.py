"""vardist: inference-time scaling search (VAR-Scaling) for visual autoregressive image models.

Public entry points: `vardist.search(...)` (the main job), `vardist.Study` (scaling studies),
`vardist.models.load(name, weights_dir)` and `vardist.selection` (KDE + selection rules).
"""

from vardist._version import __version__

__all__ = ["__version__", "search", "Study"]


def __getattr__(name: str):
    # Lazy: `vardist --version` and `import vardist.selection` must not pay for torch or Ray.
    if name == "search":
        from vardist.api import search

        return search
    if name == "Study":
        from vardist.study import Study

        return Study
    raise AttributeError(f"module 'vardist' has no attribute {name!r}")
