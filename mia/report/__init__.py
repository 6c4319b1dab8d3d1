"""Plots and tables from attack results and MLflow runs."""

from mia.report.roc import plot_roc

__all__ = ["plot_roc"]
