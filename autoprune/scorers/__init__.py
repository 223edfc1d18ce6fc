"""Importance criteria: which weights and channels matter least.

Pruning removes what a scorer ranks lowest. A scorer is one class behind the small
:class:`Scorer` interface and is registered by name in :data:`SCORERS`, so a space or policy
file names it (``scorer: taylor``) and its parameters (``scorer_params: {lam: 0.5}``)::

    scorer = make_scorer("gradient_magnitude", {"lam": 0.5})
    channel = scorer(model, layers, calibration)                 # {name: (out_channels,)}
    weight = scorer.weight_scores(model, layers, calibration)    # {name: like layer.weight}

Data-free: ``magnitude``, ``l2``, ``lamp``, ``random``. Calibration data (training batches,
cross-entropy loss, eval mode): ``gradient``, ``taylor``, ``gradient_magnitude``,
``activation``, ``normalized_response``, ``entropy``. Each scorer's docstring gives its
formula and source; :func:`lamp_scores` is the pure LAMP formula the ``lamp`` allocation
reuses.
"""

from __future__ import annotations

from autoprune.scorers._base import SCORERS, Calibration, Scorer, lamp_scores, make_scorer
# Import order is registry order, the order in which names are listed to users.
from autoprune.scorers.magnitude import MagnitudeScorer  # isort: skip
from autoprune.scorers.l2 import L2Scorer  # isort: skip
from autoprune.scorers.random import RandomScorer  # isort: skip
from autoprune.scorers.gradient import GradientScorer  # isort: skip
from autoprune.scorers.taylor import TaylorScorer  # isort: skip
from autoprune.scorers.gradient_magnitude import GradientMagnitudeScorer  # isort: skip
from autoprune.scorers.activation import ActivationScorer  # isort: skip
from autoprune.scorers.normalized_response import NormalizedResponseScorer  # isort: skip
from autoprune.scorers.entropy import EntropyScorer  # isort: skip
from autoprune.scorers.lamp import LampScorer  # isort: skip

__all__ = [
    "SCORERS",
    "ActivationScorer",
    "Calibration",
    "EntropyScorer",
    "GradientMagnitudeScorer",
    "GradientScorer",
    "L2Scorer",
    "LampScorer",
    "MagnitudeScorer",
    "NormalizedResponseScorer",
    "RandomScorer",
    "Scorer",
    "TaylorScorer",
    "lamp_scores",
    "make_scorer",
]
