"""Optuna samplers by name, always seeded.

A study names its sampler in the space file (``study.sampler``) or with ``--sampler``.
Each name maps to one factory that builds a seeded Optuna sampler sized to the trial
budget. Optuna 5 changed its default multi-objective sampler, so autoprune never relies on
the default: the sampler and its seed are always passed explicitly.

* ``tpe``: multivariate TPE (``group=True`` handles the conditional parameters of a policy).
* ``nsga2``: NSGA-II with a population sized to the budget (Optuna's default of 50 is too
  large for the budgets of a pruning search).
* ``gp``: Gaussian-process Bayesian optimisation (Optuna's ``GPSampler``).
* ``random``: uniform random search, the reference every model-based sampler must beat.
* ``qmc``: scrambled Sobol quasi-random search.

Infeasible trials (an accuracy drop beyond ``constraints.accuracy_drop``) are marked with
``Trial.set_constraint`` when they are told, which every constraint-aware sampler reads; the
samplers need no constraint function.
"""

from __future__ import annotations

import warnings
from typing import Callable

import optuna

from autoprune.registry import Registry

SamplerFactory = Callable[[int, int], optuna.samplers.BaseSampler]

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def startup_trials(trials: int) -> int:
    """Random trials before a model-based sampler takes over: 10, or a fifth of small budgets."""
    return max(2, min(10, trials // 5))


def nsga2_population(trials: int) -> int:
    """An NSGA-II population giving at least about five generations within the budget."""
    return max(4, min(50, trials // 5))


@SAMPLERS.register("tpe")
def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        # group=True is marked experimental; it is what makes TPE model a policy's
        # conditional parameters jointly, so autoprune uses it on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=startup_trials(trials)
        )


@SAMPLERS.register("nsga2")
def _nsga2(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=nsga2_population(trials))


@SAMPLERS.register("gp")
def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(trials))


@SAMPLERS.register("random")
def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("qmc")
def _qmc(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)


def make_sampler(name: str, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Build the sampler registered as ``name`` (unknown names list the valid ones)."""
    return SAMPLERS.get(name)(seed, trials)
