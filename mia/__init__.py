"""mia: membership inference attacks and defenses, experiment-tracked.

The core (everything under ``mia`` except :mod:`mia.tracking`) needs only torch,
numpy and scikit-learn, so it runs in a notebook or on a GPU image without
MLflow or Optuna.
"""

__version__ = "0.1.0"
