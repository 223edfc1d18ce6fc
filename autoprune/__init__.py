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

__all__ = ["__version__"]
