"""Verifiers: image-level rewards that score finished images (higher is better), for
verifier-guided search (`vardist.search(..., verifier="clip", rerank=4)`) and as study metrics.

    v = vardist.verifiers.load("toy-judge")            # or "clip", "pickscore", "aesthetic", ...
    rewards = v.score(images_uint8_NHW3, conditions)   # float64 [N]

Pure torch (no Ray). Weights are found offline (`base.find_weights`); `status()` lists every
built-in verifier with whether its weights are found. The built-ins' specs (`builtin`) are data
with lazy builders: `specs`, `get_spec`, `status`, `find_weights` and `weights_identity` import
no torch (a run's checks stay fast); a verifier's torch code is imported by `load`.
"""

from vardist.verifiers.base import (MissingVerifierWeights, Requirement, Verifier, VerifierSpec,
                                    VerifierStatus, check_images, find_weights, get_spec, load,
                                    specs, status, weights_identity)

__all__ = ["Verifier", "VerifierSpec", "VerifierStatus", "Requirement", "MissingVerifierWeights",
           "load", "specs", "get_spec", "status", "find_weights", "weights_identity",
           "check_images"]
