"""vardist's own tiny models, trained by the project and shipped inside the package.

- `toy-digits` (`specs.py`): a class-conditional VQVAE + VAR transformer built from
  `vardist.models.var`, on scikit-learn's bundled handwritten digits (`data.py`);
  `vardist.models.load("toy-digits")` needs no weights dir.
- `judge.py`: a small digit classifier, and `metrics.py`: class accuracy and toy analogues of IS
  and FID computed with it.
- `train.py`: `python -m vardist.zoo.train --out DIR` retrains all of it from a seed.
- `toy-shapes` (`shapes_specs.py`, `shapes_model.py`): a text-to-image Infinity (BSQ VAE, bit
  labels, cross-attention to a word encoder standing in for T5) built from
  `vardist.models.infinity`, on the procedural scenes of `shapes.py`; `shapes_train.py`
  (`vardist train toy-shapes --out DIR`) retrains it from a seed.
- `loop.py`: the training loop both trainers share (schedule, progress bar, train_log.jsonl).

This package file stays import-light: the registry imports `vardist.zoo.specs` and
`vardist.zoo.shapes_specs` to list models.
"""
