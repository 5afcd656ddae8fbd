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

from vardist.verifiers.base import BatchedVerifier
# the specs (toy-judge, toy-geneval) are in vardist.verifiers.builtin, which names the file
from vardist.verifiers.builtin import JUDGE_FILE


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


def _build_judge(files: dict[str, Path], device: torch.device) -> ToyJudge:
    return ToyJudge(files[JUDGE_FILE], device)


def _build_geneval(files: dict[str, Path], device: torch.device) -> ToyGenEval:
    return ToyGenEval(device)
