"""VAR (class-conditional ImageNet 256, and 512 with shared AdaLN for d36; FoundationVision/VAR)
in pure PyTorch: the multi-scale VQVAE, the transformer, and the scale-wise generator the engine
drives."""

from vardist._lazy import lazy_exports

# Imported on first use: the registry imports vardist.models.var.specs, which must not pull in
# the torch modules below (a refused run never loads torch).
_EXPORTS = {"VARGenerator": "generator", "configs_from_reference": "generator",
            "from_fixture": "generator", "VARConfig": "transformer",
            "VARTransformer": "transformer", "VQVAE": "vqvae", "VQVAEConfig": "vqvae"}
__all__ = ["VARGenerator", "VARConfig", "VARTransformer", "VQVAE", "VQVAEConfig",
           "configs_from_reference", "from_fixture"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
