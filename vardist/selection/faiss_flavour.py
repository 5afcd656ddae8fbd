"""The one FAISS install vardist runs with, or an error that says how to get it.

FAISS ships as several PyPI packages (faiss-cpu, faiss-gpu-cu12, faiss-gpu-cu11, ...) that all
install the same `faiss/` module files, so with two installed one silently overwrites the other.
The project's extras install one (`vardist[cpu]` or `vardist[gpu]`); this refuses the mix.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from types import ModuleType

FIX = ("install exactly one FAISS flavour: pip install -e \".[cpu]\" (faiss-cpu) or "
       "pip install -e \".[gpu]\" (faiss-gpu-cu12)")


def installed_flavours() -> list[str]:
    """The FAISS distributions installed in this environment (by their metadata)."""
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in metadata.distributions()}
    return sorted(n for n in names if n == "faiss" or n.startswith("faiss-"))


@lru_cache(maxsize=1)
def load_faiss() -> ModuleType:
    """`import faiss`, after checking that exactly one flavour is installed."""
    flavours = installed_flavours()
    if len(flavours) > 1:
        raise ImportError(f"several FAISS packages are installed ({', '.join(flavours)}) and "
                          f"overwrite each other's faiss/ files: pip uninstall -y "
                          f"{' '.join(flavours)}, then {FIX}")
    try:
        import faiss
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"vardist's selection needs FAISS, which is not installed: "
                                  f"{FIX}") from e
    return faiss
