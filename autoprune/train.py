"""Dense training, finetuning and evaluation: the one training loop every trial uses.

The same loop trains the dense model once per study and finetunes each pruned model
between the prune steps of its schedule. What varies is passed in:

* the data, as ``make_batches(epoch_index) -> iterable of (x, y)`` plus the number of
  batches in one pass (``steps_per_epoch``). :func:`bundle_batches` adapts any object with
  a ``loader(split, batch_size, shuffle=..., seed=...)`` method (the project's data
  bundle) to that form;
* the budget, in **epochs, possibly fractional**: ``epochs=0.25`` runs a quarter of the
  batches of one pass, rounded up to at least one batch. ``start_epoch`` says where in
  the data stream the call begins, so that successive finetune rounds of a schedule see
  successive parts of the data instead of the same first quarter each time;
* the pruning engine's hook, ``after_step``, called after every optimizer step: it
  re-applies masks (pruned weights stay zero) or recomputes dynamic masks;
* an optional teacher for knowledge distillation (Hinton, Vinyals & Dean 2015,
  "Distilling the Knowledge in a Neural Network"), usually the dense model itself.

A diverging run (the loss or a parameter becomes NaN or infinite) is not an exception:
:func:`train` stops and returns ``diverged=True`` with a reason, and the trial engine
turns it into a failed trial with that message. A run is deterministic for a given
``seed``: the loop seeds torch's random generators inside a forked RNG state, so the
caller's global RNG is left untouched. The loop never changes torch's thread count; the
caller sets one thread per CPU trial.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry

Batch = tuple[Tensor, Tensor]
MakeBatches = Callable[[int], Iterable[Batch]]
OptimizerFactory = Callable[[Iterable[nn.Parameter], float, float], torch.optim.Optimizer]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
LR_SCHEDULES = ("cosine", "constant")
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0}


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9, the usual choice for finetuning CNNs."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam; weight decay, if any, is decoupled (AdamW) so it does not fight the adaptive step."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(
    params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` (``sgd`` or ``adam``) over ``params``.

    ``weight_decay=None`` takes the optimizer's default (5e-4 for ``sgd``, 0 for ``adam``).
    Unknown names raise :class:`~autoprune.errors.AutopruneError` listing the valid ones.
    """
    factory = OPTIMIZERS.get(name, where="finetune.optimizer: ")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise AutopruneError(f"finetune.lr must be a positive number, got {lr!r}")
    if weight_decay is None:
        weight_decay = DEFAULT_WEIGHT_DECAY[name]
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise AutopruneError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    return factory(params, float(lr), float(weight_decay))


class _HasLoader(Protocol):
    def loader(self, split: str, batch_size: int, *, shuffle: bool, seed: int) -> Iterable[Batch]: ...


def bundle_batches(
    bundle: _HasLoader, batch_size: int, *, split: str = "train", seed: int = 0
) -> MakeBatches:
    """``make_batches`` for :func:`train` from an object with a ``loader`` method.

    Epoch ``e`` is ``bundle.loader(split, batch_size, shuffle=True, seed=seed + e)``: a new
    shuffle each pass, the same ones for the same ``seed``.
    """

    def make_batches(epoch: int) -> Iterable[Batch]:
        return bundle.loader(split, batch_size, shuffle=True, seed=seed + epoch)

    return make_batches


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train` did.

    ``final_loss`` is the loss of the last batch, ``last_epoch_loss`` the mean loss over
    the batches of the last (possibly partial) epoch; both are ``None`` when no step ran.
    ``epochs`` is the number of passes actually made (``steps / steps_per_epoch``).
    ``reason`` says in one line what diverged and where, without advice: the caller knows
    which setting (``model.pretrain.lr`` or ``finetune.lr``) to name.
    """

    steps: int
    epochs: float
    final_loss: float | None
    last_epoch_loss: float | None
    diverged: bool = False
    reason: str | None = None


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Batches in ``epochs`` passes of ``steps_per_epoch`` batches: rounded up, at least 1.

    ``epochs == 0`` means no training (0 steps).
    """
    if epochs == 0:
        return 0
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


def _lr_at(step: int, steps: int, lr: float, lr_schedule: str) -> float:
    """Learning rate for the 0-based ``step`` of ``steps``: constant, or cosine decay towards 0."""
    if lr_schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, temperature: float, weight: float
) -> Tensor:
    """``(1 - α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    Hinton et al. 2015. The ``T²`` factor keeps the soft-target gradients on the same
    scale as the hard-target ones when ``T`` changes. Logits are ``(batch, classes)``.
    """
    hard = F.cross_entropy(student_logits, targets)
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard + weight * (t * t) * soft


def _batches(make_batches: MakeBatches, start_step: int, steps_per_epoch: int) -> Iterator[tuple[int, Batch]]:
    """``(epoch_index, batch)`` pairs from global step ``start_step`` on, across passes."""
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        yielded = 0
        for batch in itertools.islice(make_batches(epoch), skip, steps_per_epoch):
            yielded += 1
            yield epoch, batch
        if yielded == 0:
            raise AutopruneError(
                f"training data: epoch {epoch} yielded no batches after skipping {skip}; "
                f"check steps_per_epoch against the data"
            )
        epoch, skip = epoch + 1, 0


def _check_train_args(
    epochs: float,
    start_epoch: float,
    steps_per_epoch: int,
    lr_schedule: str,
    temperature: float,
    distill_weight: float,
) -> None:
    """Reject arguments no training run can use, naming the setting."""
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs >= 0):
        raise AutopruneError(f"finetune.epochs must be a number >= 0, got {epochs!r}")
    if not (isinstance(start_epoch, (int, float)) and math.isfinite(start_epoch) and start_epoch >= 0):
        raise AutopruneError(f"start_epoch must be a number >= 0, got {start_epoch!r}")
    if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
        raise AutopruneError(
            f"training data: steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}"
        )
    if lr_schedule not in LR_SCHEDULES:
        raise AutopruneError(f"unknown lr_schedule {lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    if not temperature > 0:
        raise AutopruneError(f"finetune.temperature must be > 0, got {temperature!r}")
    if not 0.0 <= distill_weight <= 1.0:
        raise AutopruneError(f"finetune.distill_weight must be in [0, 1], got {distill_weight!r}")


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _nonfinite_parameter(model: nn.Module) -> str | None:
    """The name of the first parameter holding NaN or inf, or ``None``."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not torch.isfinite(param).all():
                return name
    return None


def train(
    model: nn.Module,
    make_batches: MakeBatches,
    *,
    epochs: float,
    lr: float,
    steps_per_epoch: int | None = None,
    start_epoch: float = 0.0,
    optimizer: str = "sgd",
    weight_decay: float | None = None,
    lr_schedule: str = "cosine",
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.5,
    after_step: Callable[[], None] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    log_every: int = 50,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` passes (fractional allowed) and report.

    Args:
        model: classifier returning logits ``(batch, classes)``; trained in place and
            returned to the train/eval mode it had.
        make_batches: ``epoch_index -> iterable of (x, y)``; a fresh pass per call.
        epochs: passes to run; fractions run ``ceil(epochs · steps_per_epoch)`` batches
            (at least 1); 0 runs nothing.
        lr: peak learning rate.
        steps_per_epoch: batches in one pass; ``None`` takes ``len(make_batches(0))``.
        start_epoch: position in the data stream where this call begins (successive
            finetune rounds pass the epochs already run).
        optimizer: ``sgd`` (Nesterov momentum 0.9) or ``adam`` (AdamW).
        weight_decay: ``None`` for the optimizer's default (5e-4 sgd, 0 adam).
        lr_schedule: ``cosine`` (decays from ``lr`` towards 0 over this call) or ``constant``.
        teacher: if given, distil from it (run in eval mode under no_grad).
        temperature, distill_weight: ``T`` and ``α`` of :func:`distillation_loss`.
        after_step: called after every optimizer step (the pruning engine's hook).
        on_log: receives ``{"epoch", "step", "loss", "lr"}`` every ``log_every`` steps and
            after the last step; ``epoch`` is fractional and counts from ``start_epoch``.
        device: where to train; model and teacher are moved there. ``None``: the model's.
        seed: seeds torch inside a forked RNG state; same seed, same result.

    Returns:
        A :class:`TrainResult`; ``diverged=True`` (no exception) when the loss or a
        parameter stops being finite.
    """
    if steps_per_epoch is None:
        first = make_batches(0)
        try:
            steps_per_epoch = len(first)  # type: ignore[arg-type]
        except TypeError:
            raise AutopruneError(
                "training data: the batches have no length; pass steps_per_epoch"
            ) from None
    _check_train_args(epochs, start_epoch, steps_per_epoch, lr_schedule, temperature, distill_weight)
    if not (isinstance(log_every, int) and log_every >= 1):
        raise AutopruneError(f"log_every must be an integer >= 1, got {log_every!r}")
    target = torch.device(device) if device is not None else _model_device(model)
    model.to(target)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    steps = total_steps(epochs, steps_per_epoch)
    start_step = round(start_epoch * steps_per_epoch)
    if steps == 0:
        return TrainResult(steps=0, epochs=0.0, final_loss=None, last_epoch_loss=None)

    was_training = model.training
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(target).eval()
    fork_devices = [target] if target.type == "cuda" else []
    model.train()
    done, final_loss, epoch_losses, current_epoch = 0, None, [], -1
    diverged, reason = False, None
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for epoch, (x, y) in _batches(make_batches, start_step, steps_per_epoch):
                if epoch != current_epoch:
                    current_epoch, epoch_losses = epoch, []
                x, y = x.to(target, non_blocking=True), y.to(target, non_blocking=True)
                step_lr = _lr_at(done, steps, lr, lr_schedule)
                for group in opt.param_groups:
                    group["lr"] = step_lr
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss = distillation_loss(
                        logits, teacher_logits, y, temperature=temperature, weight=distill_weight
                    )
                else:
                    loss = F.cross_entropy(logits, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    diverged = True
                    reason = f"loss became {value} at step {done + 1} of {steps} (lr {step_lr:.3g})"
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                done += 1
                final_loss = value
                epoch_losses.append(value)
                if on_log is not None and (done % log_every == 0 or done == steps):
                    on_log({
                        "epoch": start_epoch + done / steps_per_epoch,
                        "step": done,
                        "loss": value,
                        "lr": step_lr,
                    })
                if done == steps:
                    break
        if not diverged:
            bad = _nonfinite_parameter(model)
            if bad is not None:
                diverged = True
                reason = f"parameter {bad!r} became non-finite after {done} steps (peak lr {lr:.3g})"
    finally:
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_was_training)
    last_epoch_loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else None
    return TrainResult(
        steps=done,
        epochs=done / steps_per_epoch,
        final_loss=final_loss,
        last_epoch_loss=last_epoch_loss,
        diverged=diverged,
        reason=reason,
    )


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``x`` (``(N, ...)``) against labels ``y`` (``(N,)``).

    Runs in eval mode under ``no_grad`` on the model's device, in batches of
    ``batch_size``, and returns the model to the mode it had.
    """
    if len(x) == 0 or len(x) != len(y):
        raise AutopruneError(
            f"evaluation data: need as many labels as inputs (> 0), got {len(x)} and {len(y)}"
        )
    device = _model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(device)
                yb = y[i : i + batch_size].to(device)
                correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(x)
