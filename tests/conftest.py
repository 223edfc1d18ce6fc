from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from autoprune.context import TrialContext, build_setup, trial_context
from autoprune.dense import prepare_dense
from autoprune.paths import StudyPaths
from autoprune.space import SearchSpace, parse_space

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"

torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def digits_space(model: dict | None = None, **sections: dict) -> SearchSpace:
    """A small digits space: an MLP trained for a few seconds, quick latency timing."""
    raw = {
        "study": {"name": "t-digits", "seed": 0},
        "model": model or {"name": "mlp", "args": {"hidden": [64, 32]}, "pretrain": {"epochs": 15, "lr": 0.05}},
        "data": {"name": "digits", "batch_size": 64},
        "latency": {"repeats": 5, "warmup": 1},
    }
    raw.update(sections)
    return parse_space(raw, source="test.yaml")


def _context(space: SearchSpace, folder: Path) -> TrialContext:
    setup = build_setup(space)
    dense = prepare_dense(setup, StudyPaths(folder, space.study.name), log=lambda _: None)
    return trial_context(setup, dense)


@pytest.fixture(scope="session")
def digits_ctx(tmp_path_factory: pytest.TempPathFactory) -> TrialContext:
    """Dense MLP on digits, trained once per test session."""
    return _context(digits_space(), tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="session")
def cnn_ctx(tmp_path_factory: pytest.TempPathFactory) -> TrialContext:
    """Dense small_cnn on digits, trained once per test session."""
    model = {"name": "small_cnn", "args": {"channels": [8, 16], "hidden": 32}, "pretrain": {"epochs": 4, "lr": 0.05}}
    return _context(digits_space(model), tmp_path_factory.mktemp("studies"))


@pytest.fixture
def studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty studies folder used by everything the test runs."""
    root = tmp_path / "studies"
    monkeypatch.setenv("AUTOPRUNE_STUDIES", str(root))
    return root
