"""Calibrated discrete-event simulation of nercc serving at any scale, and a planner on top of it.

``nercc simulate`` / ``nercc plan`` (see docs/simulate.md). The model (``model``), the SimPy reference engine
(``des``), the vectorized engine (``fast``), summaries (``core``), the real calibration/validation run
(``measure``), the planner (``plan``) and the scale figures (``figures``).
"""

from nercc.simulate.core import simulate
from nercc.simulate.model import (
    SCHEMES,
    AccuracyTable,
    CodingCost,
    ServiceModel,
    SimSettings,
    make_draws,
)

__all__ = ["simulate", "SimSettings", "ServiceModel", "AccuracyTable", "CodingCost", "make_draws", "SCHEMES"]
