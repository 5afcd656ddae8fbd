"""Model families (pure PyTorch, no Ray): VAR, Infinity, FlexVAR and the project's toy zoo,
all behind one scale-wise generator interface (`interface.py`)."""

from vardist.models.interface import GenState, Sampling, ScaleWiseGenerator
from vardist.models.registry import ModelSpec, SearchDefaults, get_spec, load, specs

__all__ = ["GenState", "Sampling", "ScaleWiseGenerator", "ModelSpec", "SearchDefaults",
           "get_spec", "load", "specs"]
