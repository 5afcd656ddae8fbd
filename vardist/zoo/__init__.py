"""vardist's own tiny models, trained by the project and shipped inside the package.

- `toy-digits` (`specs.py`): a class-conditional VQVAE + VAR transformer built from
  `vardist.models.var`, on scikit-learn's bundled handwritten digits (`data.py`);
  `vardist.models.load("toy-digits")` needs no weights dir.
- `judge.py`: a small digit classifier, and `metrics.py`: class accuracy and toy analogues of IS
  and FID computed with it.
- `train.py`: `python -m vardist.zoo.train --out DIR` retrains all of it from a seed.

This package file stays import-light: the registry imports `vardist.zoo.specs` to list models.
"""
