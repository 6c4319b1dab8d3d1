"""Defenses: one module per defense, one small interface (:mod:`mia.defenses.base`)."""

from mia.defenses.base import (DEFENSES, Defense, DefenseSpec, HyperParam, ReleasedModel, check_scenario,
                               make_defense, register)

__all__ = ["DEFENSES", "Defense", "DefenseSpec", "HyperParam", "ReleasedModel", "check_scenario",
           "make_defense", "register"]
