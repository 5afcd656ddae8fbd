"""VAR (class-conditional ImageNet 256, and 512 with shared AdaLN for d36; FoundationVision/VAR)
in pure PyTorch: the multi-scale VQVAE, the transformer, and the scale-wise generator the engine
drives."""

from vardist.models.var.generator import VARGenerator, configs_from_reference, from_fixture
from vardist.models.var.transformer import VARConfig, VARTransformer
from vardist.models.var.vqvae import VQVAE, VQVAEConfig

__all__ = ["VARGenerator", "VARConfig", "VARTransformer", "VQVAE", "VQVAEConfig",
           "configs_from_reference", "from_fixture"]
