"""The toy models' verifiers, so verifier-guided search runs on the CPU with shipped weights:

- `toy-judge` (toy-digits): the zoo's digit judge's probability of the requested class;
- `toy-geneval` (toy-shapes): 1.0 when the image satisfies its prompt's GenEval record under the
  toy evaluator (`vardist.zoo.geneval_eval`), else 0.0. Binary, as GenEval scores an image; ties
  among reranked candidates fall to density, then index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vardist.verifiers.base import BatchedVerifier, Requirement, VerifierSpec, register

JUDGE_FILE = "judge.safetensors"  # vardist.zoo.specs.JUDGE_FILE (not imported: no model code)


class ToyJudge(BatchedVerifier):
    def __init__(self, judge_path: Path, device: torch.device) -> None:
        from vardist.zoo.judge import load_judge

        super().__init__("toy-judge", "class", device, batch_size=500)
        self.judge = load_judge(judge_path).to(self.device)

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        labels = np.asarray(conditions)
        if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"verifier 'toy-judge' scores digits: conditions must be class "
                             f"labels 0-9, got {conditions[:5]!r}")
        # torch.tensor copies: images read from PNGs may be read-only arrays
        probs, _ = self.judge.predict(torch.tensor(images, device=self.device))
        return probs[torch.arange(len(labels)), torch.from_numpy(labels)].double().cpu().numpy()


class ToyGenEval(BatchedVerifier):
    """Conditions: prompt texts (looked up among `records`, default the shipped evaluation
    prompts) or GenEval records (dicts)."""

    def __init__(self, device: torch.device, records: Sequence[dict] | None = None) -> None:
        from vardist.zoo.geneval_eval import ToyGenEvalMetric

        super().__init__("toy-geneval", "prompt", device)
        self.metric = ToyGenEvalMetric(list(records) if records is not None else None)

    def _score(self, images: np.ndarray, conditions: list[Any]) -> np.ndarray:
        from vardist.zoo.geneval_eval import evaluate_image

        return np.array([float(evaluate_image(im, c if isinstance(c, dict)
                                              else self.metric.record(c))[0])
                         for im, c in zip(images, conditions)])


def _judge_dir() -> Path:
    from vardist.zoo.specs import WEIGHTS_DIR

    return WEIGHTS_DIR


register(VerifierSpec(
    name="toy-judge", condition_kind="class", models=("toy-digits",),
    description="toy-digits: the zoo digit judge's probability of the requested class (shipped)",
    requires=(Requirement(JUDGE_FILE, "a retrained judge: `vardist train toy-digits --out DIR` "
                                      "writes it"),),
    bundled_dir=_judge_dir,
    build=lambda files, device: ToyJudge(files[JUDGE_FILE], device)))

def _known_prompts(conditions: Sequence[Any]) -> None:
    from vardist.zoo.shapes import make_eval_prompts

    known = {r["prompt"] for r in make_eval_prompts()}
    unknown = [c for c in conditions if not isinstance(c, dict) and c not in known]
    if unknown:
        raise ValueError(f"verifier 'toy-geneval' scores the toy GenEval prompts "
                         f"(toy-geneval.jsonl); {len(unknown)} prompt(s) are not among them, "
                         f"e.g. {unknown[0]!r}")


register(VerifierSpec(
    name="toy-geneval", condition_kind="prompt", models=("toy-shapes",),
    check_conditions=_known_prompts,
    description="toy-shapes: 1 when the image satisfies its prompt's GenEval record (toy "
                "evaluator), else 0; needs no weights",
    build=lambda files, device: ToyGenEval(device)))
