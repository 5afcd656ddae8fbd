"""FlexVAR (class-conditional ImageNet 256, jiaosiyu1999/FlexVAR) in pure PyTorch: VAR's blocks
without residual prediction, a 2-D position map for any scale schedule, and the L2-normalised
VQ tokenizer that decodes from the last scale alone."""

from vardist.models.flexvar.generator import (FlexVARGenerator, build, configs_from_fixture, from_fixture,
                                              load_transformer_state)
from vardist.models.flexvar.tokenizer import FlexVAE, FlexVAEConfig
from vardist.models.flexvar.transformer import (DEFAULT_SCHEDULE, TRAINED_SIDES, FlexVARConfig,
                                                FlexVARTransformer, check_schedule)

__all__ = ["FlexVARGenerator", "FlexVAE", "FlexVAEConfig", "FlexVARConfig", "FlexVARTransformer",
           "DEFAULT_SCHEDULE", "TRAINED_SIDES", "build", "check_schedule", "configs_from_fixture",
           "from_fixture", "load_transformer_state"]
