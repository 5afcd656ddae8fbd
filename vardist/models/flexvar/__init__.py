"""FlexVAR (class-conditional ImageNet 256, jiaosiyu1999/FlexVAR) in pure PyTorch: VAR's blocks
without residual prediction, a 2-D position map for any scale schedule, and the L2-normalised
VQ tokenizer that decodes from the last scale alone."""

from vardist._lazy import lazy_exports

# Imported on first use: the registry imports vardist.models.flexvar.specs, which must not pull
# in the torch modules below (a refused run never loads torch). The configs and schedule checks
# live in the torch-free configs.py.
_EXPORTS = {"FlexVARGenerator": "generator", "build": "generator", "from_fixture": "generator",
            "load_transformer_state": "generator", "FlexVAE": "tokenizer",
            "FlexVARTransformer": "transformer", "FlexVAEConfig": "configs",
            "FlexVARConfig": "configs", "DEFAULT_SCHEDULE": "configs", "TRAINED_SIDES": "configs",
            "check_schedule": "configs", "configs_from_fixture": "configs"}
__all__ = ["FlexVARGenerator", "FlexVAE", "FlexVAEConfig", "FlexVARConfig", "FlexVARTransformer",
           "DEFAULT_SCHEDULE", "TRAINED_SIDES", "build", "check_schedule", "configs_from_fixture",
           "from_fixture", "load_transformer_state"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
