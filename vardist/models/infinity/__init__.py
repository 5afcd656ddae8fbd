"""Infinity (FoundationVision, CVPR 2025): bitwise text-to-image VAR with a BSQ VAE and a Flan-T5
text encoder, in plain PyTorch, loading the official checkpoints key for key."""

from vardist.models.infinity.bsq_vae import BSQVAE, BSQVAEConfig
from vardist.models.infinity.generator import InfinityGenerator, build, from_fixture
from vardist.models.infinity.schedules import scale_schedule
from vardist.models.infinity.transformer import Infinity, InfinityConfig

__all__ = ["BSQVAE", "BSQVAEConfig", "Infinity", "InfinityConfig", "InfinityGenerator", "build",
           "from_fixture", "scale_schedule"]
