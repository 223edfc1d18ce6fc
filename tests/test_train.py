from __future__ import annotations

import math
from typing import Iterable

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.train import (
    TrainResult,
    bundle_batches,
    distillation_loss,
    evaluate,
    make_optimizer,
    total_steps,
    train,
)

BATCH = 64


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Bundle:
    """A stand-in for the project's data bundle: ``loader`` over in-memory tensors."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def loader(self, split: str, batch_size: int, *, shuffle: bool, seed: int) -> list[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))
        return [(self.x[i], self.y[i]) for i in order.split(batch_size)]


def test_two_epochs_on_digits_beat_chance_by_far(digits) -> None:
    xtr, ytr, xva, yva = digits
    model = mlp()
    before = evaluate(model, xva, yva)
    result = train(model, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=2.0, lr=0.3)
    after = evaluate(model, xva, yva)
    assert result.steps == 2 * math.ceil(1400 / BATCH) and not result.diverged
    assert result.last_epoch_loss is not None and result.last_epoch_loss < 1.0
    assert after > 0.7 and after > before + 0.3


@pytest.mark.parametrize("epochs,expected", [(0.25, 6), (0.01, 1), (1.5, 33), (2.0, 44), (0.0, 0)])
def test_fractional_epochs_run_the_expected_batches(digits, epochs: float, expected: int) -> None:
    xtr, ytr, _, _ = digits
    calls = []
    result = train(mlp(), bundle_batches(Bundle(xtr, ytr), BATCH), epochs=epochs, lr=0.05,
                   after_step=lambda: calls.append(1))
    assert len(calls) == expected == result.steps == total_steps(epochs, 22)


def test_start_epoch_continues_the_data_stream() -> None:
    seen: list[int] = []

    def make_batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        for i in range(4):
            seen.append(epoch * 4 + i)
            yield torch.zeros(2, 64), torch.zeros(2, dtype=torch.long)

    train(mlp(), make_batches, steps_per_epoch=4, epochs=0.5, start_epoch=0.75, lr=0.01)
    assert seen[-2:] == [3, 4]


def test_on_log_receives_progress(digits) -> None:
    xtr, ytr, _, _ = digits
    logs: list[dict] = []
    train(mlp(), bundle_batches(Bundle(xtr, ytr), BATCH), epochs=1.0, lr=0.05, on_log=logs.append, log_every=10)
    assert [entry["step"] for entry in logs] == [10, 20, 22]
    assert logs[-1]["epoch"] == pytest.approx(1.0)
    assert logs[0]["lr"] > logs[-1]["lr"] > 0  # cosine decay
    assert set(logs[0]) == {"epoch", "step", "loss", "lr"}


def test_distillation_runs_and_differs_from_plain_ce(digits) -> None:
    xtr, ytr, _, _ = digits
    teacher = mlp(seed=1)
    train(teacher, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=1.0, lr=0.1)
    teacher.train()
    batches = bundle_batches(Bundle(xtr, ytr), BATCH)
    plain = train(mlp(), batches, epochs=0.5, lr=0.05)
    distilled = train(mlp(), batches, epochs=0.5, lr=0.05, teacher=teacher, temperature=4.0, distill_weight=0.5)
    assert distilled.steps == plain.steps and not distilled.diverged
    assert distilled.final_loss != pytest.approx(plain.final_loss)
    assert teacher.training  # teacher's mode restored


def test_distillation_loss_formula() -> None:
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy(s, y)
    assert distillation_loss(s, t, y, temperature=2.0, weight=0.0) == pytest.approx(float(ce))
    assert float(distillation_loss(s, s, y, temperature=2.0, weight=1.0)) == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(t / 2, dim=1)
    kl = (p * (p.log() - torch.log_softmax(s / 2, dim=1))).sum(1).mean()
    expected = 0.7 * ce + 0.3 * 4 * kl
    assert float(distillation_loss(s, t, y, temperature=2.0, weight=0.3)) == pytest.approx(float(expected), rel=1e-5)


def test_huge_lr_diverges_without_raising(digits) -> None:
    xtr, ytr, _, _ = digits
    result = train(mlp(), bundle_batches(Bundle(xtr, ytr), BATCH), epochs=2.0, lr=1e6, lr_schedule="constant")
    assert result.diverged and "lr" in (result.reason or "")
    assert result.steps < 44


def test_nan_input_diverges_at_first_step() -> None:
    calls = []

    def make_batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
        return [(torch.full((4, 64), float("nan")), torch.zeros(4, dtype=torch.long))] * 3

    result = train(mlp(), make_batches, epochs=1.0, lr=0.1, after_step=lambda: calls.append(1))
    assert result == TrainResult(steps=0, epochs=0.0, final_loss=None, last_epoch_loss=None,
                                 diverged=True, reason=result.reason)
    assert "nan" in result.reason and calls == []


def test_same_seed_same_result(digits) -> None:
    xtr, ytr, _, _ = digits

    def run(seed: int) -> tuple[TrainResult, Tensor]:
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
        torch.manual_seed(0)
        for p in model.parameters():
            nn.init.normal_(p, std=0.1)
        result = train(model, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=0.5, lr=0.05, seed=seed)
        return result, model[0].weight.detach().clone()

    (r1, w1), (r2, w2), (_, w3) = run(7), run(7), run(8)
    assert r1 == r2 and torch.equal(w1, w2)
    assert not torch.equal(w1, w3)  # dropout draws depend on the seed


def test_train_leaves_global_rng_untouched(digits) -> None:
    xtr, ytr, _, _ = digits
    model = mlp()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=0.1, lr=0.05, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.3), ("adam", 0.01)])
def test_sgd_and_adam_both_learn(digits, optimizer: str, lr: float) -> None:
    xtr, ytr, xva, yva = digits
    model = mlp()
    result = train(model, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=2.0, lr=lr, optimizer=optimizer)
    assert not result.diverged and evaluate(model, xva, yva) > 0.7


def test_make_optimizer_defaults_and_unknown_name() -> None:
    params = list(mlp().parameters())
    sgd = make_optimizer(params, "sgd", 0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["weight_decay"] == 5e-4
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert make_optimizer(params, "adam", 0.01).defaults["weight_decay"] == 0.0
    with pytest.raises(AutopruneError, match="unknown optimizer 'rmsprop'.*valid: sgd, adam"):
        make_optimizer(params, "rmsprop", 0.1)


def test_evaluate_restores_mode_and_counts_correctly() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Dropout(0.9))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    assert evaluate(model, x, y, batch_size=3) == 0.75  # dropout off: deterministic
    assert model.training
    model.eval()
    evaluate(model, x, y)
    assert not model.training


def test_train_restores_mode(digits) -> None:
    xtr, ytr, _, _ = digits
    model = mlp().eval()
    train(model, bundle_batches(Bundle(xtr, ytr), BATCH), epochs=0.1, lr=0.05)
    assert not model.training


@pytest.mark.parametrize(
    "kwargs,match",
    [({"epochs": -1.0}, "epochs"), ({"lr": 0.0}, "lr"), ({"lr_schedule": "step"}, "cosine, constant"),
     ({"distill_weight": 1.5}, "distill_weight"), ({"temperature": 0.0}, "temperature")],
)
def test_bad_arguments_raise(digits, kwargs: dict, match: str) -> None:
    xtr, ytr, _, _ = digits
    args = {"epochs": 1.0, "lr": 0.1} | kwargs
    with pytest.raises(AutopruneError, match=match):
        train(mlp(), bundle_batches(Bundle(xtr, ytr), BATCH), **args)


def test_unsized_batches_need_steps_per_epoch() -> None:
    def make_batches(epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
        yield torch.zeros(2, 64), torch.zeros(2, dtype=torch.long)

    with pytest.raises(AutopruneError, match="steps_per_epoch"):
        train(mlp(), make_batches, epochs=1.0, lr=0.1)
