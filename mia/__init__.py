"""mia: membership inference attacks and defenses, experiment-tracked.

The core (everything under ``mia`` except :mod:`mia.tracking` and the plots of
:mod:`mia.report`) needs torch, numpy, scipy, scikit-learn and tqdm, not MLflow,
Optuna or Opacus, so it runs in a notebook or on a bare GPU image.
"""

__version__ = "0.1.0"
