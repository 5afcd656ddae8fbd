"""Infinity (FoundationVision, CVPR 2025): bitwise text-to-image VAR with a BSQ VAE and a Flan-T5
text encoder, in plain PyTorch, loading the official checkpoints key for key."""

from vardist._lazy import lazy_exports

# Imported on first use: the registry imports vardist.models.infinity.specs, which must not pull
# in the torch modules below (a refused run never loads torch).
_EXPORTS = {"BSQVAE": "bsq_vae", "BSQVAEConfig": "bsq_vae", "InfinityGenerator": "generator",
            "build": "generator", "from_fixture": "generator", "scale_schedule": "schedules",
            "Infinity": "transformer", "InfinityConfig": "transformer"}
__all__ = ["BSQVAE", "BSQVAEConfig", "Infinity", "InfinityConfig", "InfinityGenerator", "build",
           "from_fixture", "scale_schedule"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
