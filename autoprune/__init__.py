"""autoprune: search neural-network pruning policies.

The library behind the ``autoprune`` command. A study reads a search-space file
(:mod:`autoprune.space`), samples :class:`~autoprune.policy.Policy` values with Optuna, runs
each as a trial (:mod:`autoprune.trial`) and keeps the Pareto front of accuracy, sparsity and
latency. See ``docs/ARCHITECTURE.md`` for the modules and the data flow.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autoprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "apply_policy", "load_policy", "load_pruned"]

# The public API, imported on first use so that ``import autoprune`` stays cheap.
_LAZY = {
    "load_policy": "autoprune.policy",  # load_policy(path) -> Policy (bare or exported policy.yaml)
    "apply_policy": "autoprune.apply",  # apply_policy(model, policy, data) -> TrialResult
    "load_pruned": "autoprune.artifacts",  # load_pruned(export_folder) -> nn.Module (eval mode)
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
