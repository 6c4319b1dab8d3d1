"""Optuna search over defense hyperparameters (privacy-utility frontiers).

Depends on :mod:`mia.experiment` for tracked trials; :mod:`mia` never imports
this package, so the core runs where Optuna is not installed.
"""
