"""Measure what a pruned model costs and how well it works, under the shared metric names.

* ``sparsity`` = 1 − (non-zero prunable weights / dense prunable weights), where prunable
  weights are the ``weight`` tensors of conv and linear layers. The denominator is the
  *dense* model's count, passed in, so removed channels count as zeros.
* ``params``: parameters of the model as it runs (removed channels are gone, masked weights
  still count); ``params_nonzero``: those that are not zero (masked weights are).
* ``macs``: multiply-accumulates of one forward pass on a batch of one, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2). It counts conv and
  matmul work only (no bias, normalisation or activations) and dense kernels, so masks do
  not lower it; removed channels do.
* ``size_bytes``: bytes of ``torch.save(state_dict)``. A masked model is measured as its
  baked state dict (what :func:`autoprune.prune.remove_masks` leaves), which has the dense
  size: masks do not shrink an uncompressed checkpoint; removed channels do.
* ``latency_ms``: median wall time of one forward pass over ``repeats`` timed runs after
  ``warmup`` untimed ones, in eval mode under :func:`torch.inference_mode`, with torch's
  thread count fixed for the measurement (and restored after), synchronising CUDA.
  ``speedup`` = dense latency / pruned latency, timed by :func:`measure_latency_pair` with
  the two models' runs interleaved so that machine noise hits both alike.
* ``accuracy``: top-1 fraction correct, in eval mode without gradients.

A masked layer is recognised by the ``weight_orig`` / ``weight_mask`` pair that both
:mod:`autoprune.prune` and :mod:`torch.nn.utils.prune` use; its effective weight is their
product.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE_TYPES = (_ConvNd, nn.Linear)


def _effective_parameters(model: nn.Module) -> Iterator[Tensor]:
    """Every distinct parameter as the forward pass uses it (``orig * mask`` when masked)."""
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            mask = None
            if name.endswith("_orig"):
                mask = module._buffers.get(name[: -len("_orig")] + "_mask")
            yield param.detach() if mask is None else param.detach() * mask


def _effective_weight(module: nn.Module) -> Tensor:
    """A conv/linear layer's weight as its forward pass uses it."""
    if "weight_orig" in module._parameters and "weight_mask" in module._buffers:
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def prunable_weight_count(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) entries of the ``weight`` tensors of all conv and linear layers."""
    total = nonzero = 0
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            weight = _effective_weight(module)
            total += weight.numel()
            nonzero += int(torch.count_nonzero(weight))
    return total, nonzero


def sparsity(model: nn.Module, dense_prunable: int) -> float:
    """1 − (non-zero prunable weights / ``dense_prunable``), the dense model's total count.

    ``dense_prunable`` is ``prunable_weight_count(dense_model)[0]``; against it, channels
    removed from ``model`` count as pruned weights.
    """
    total, nonzero = prunable_weight_count(model)
    if dense_prunable <= 0 or total > dense_prunable:
        raise ValueError(
            f"dense_prunable={dense_prunable} must be positive and at least the model's {total}"
        )
    return 1.0 - nonzero / dense_prunable


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(params, params_nonzero) over all parameters of the model as it runs."""
    params = nonzero = 0
    for tensor in _effective_parameters(model):
        params += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return params, nonzero


def _device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its train/eval flag after."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one eval-mode forward on a batch of one input.

    Args:
        input_shape: one example's shape without the batch dimension, e.g. ``(1, 28, 28)``.

    Counted by ``FlopCounterMode`` (FLOPs / 2): conv and matmul work of dense kernels only.
    """
    example = torch.zeros(1, *input_shape, device=_device(model))
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() // 2


def _baked_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with each ``<p>_orig``/``<p>_mask`` pair folded into ``<p>``."""
    state = model.state_dict()
    baked: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            baked[base] = value * state[base + "_mask"]
        elif not (key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state):
            baked[key] = value
    return baked


def size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save`` of the (baked) state dict: the checkpoint's size on disk."""
    buffer = io.BytesIO()
    torch.save(_baked_state_dict(model), buffer)
    return buffer.getbuffer().nbytes


def measure_model(
    model: nn.Module, *, dense_prunable: int, input_shape: Sequence[int]
) -> dict[str, float]:
    """``sparsity``, ``params``, ``params_nonzero``, ``macs`` and ``size_bytes`` of ``model``.

    Latency and accuracy need timing settings and data: see :func:`measure_latency`,
    :func:`measure_latency_pair` and :func:`accuracy`.
    """
    params, nonzero = param_counts(model)
    return {
        "sparsity": sparsity(model, dense_prunable),
        "params": float(params),
        "params_nonzero": float(nonzero),
        "macs": float(macs(model, input_shape)),
        "size_bytes": float(size_bytes(model)),
    }


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count."""
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _timer(model: nn.Module, example: Tensor) -> Callable[[], float]:
    """A function running one forward of ``model`` on ``example`` and returning its ms."""
    cuda = example.device.type == "cuda"

    def run() -> float:
        if cuda:
            torch.cuda.synchronize(example.device)
        start = time.perf_counter()
        model(example)
        if cuda:
            torch.cuda.synchronize(example.device)
        return (time.perf_counter() - start) * 1000.0

    return run


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself if it lives on ``device``, else a copy moved there."""
    return model if _device(model) == device else copy.deepcopy(model).to(device)


def _time_models(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    *,
    batch_size: int,
    warmup: int,
    repeats: int,
    threads: int,
    device: str | torch.device | None,
) -> list[float]:
    """Median forward ms of each model, their timed runs interleaved (order alternating)."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch_size >= 1")
    target = torch.device(device) if device is not None else _device(models[0])
    placed = [_on_device(model, target) for model in models]
    example = torch.randn(batch_size, *input_shape, device=target)
    times: list[list[float]] = [[] for _ in placed]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_threads(threads))
        for model in placed:
            stack.enter_context(_eval_mode(model))
        stack.enter_context(torch.inference_mode())
        runs = [_timer(model, example) for model in placed]
        for _ in range(warmup):
            for run in runs:
                run()
        for repeat in range(repeats):
            order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
            for index in order:
                times[index].append(runs[index]())
    return [statistics.median(series) for series in times]


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
    device: str | torch.device | None = None,
) -> float:
    """``latency_ms``: median forward time in milliseconds of ``model``.

    Args:
        input_shape: one example's shape without the batch dimension.
        batch_size: examples per timed forward pass.
        warmup: untimed forward passes first (allocator, caches, lazy init).
        repeats: timed passes; the median resists outliers from other processes.
        threads: torch intra-op threads during the measurement, restored afterwards.
        device: where to run; default the model's device. A model elsewhere is copied there.
    """
    return _time_models(
        [model], input_shape, batch_size=batch_size, warmup=warmup, repeats=repeats,
        threads=threads, device=device,
    )[0]


def measure_latency_pair(
    dense: nn.Module,
    pruned: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Latency of a dense and a pruned model timed in turn, and their ratio.

    Same settings as :func:`measure_latency`; the two models' runs alternate (dense first on
    even repeats, pruned first on odd ones) so slow phases of the machine hit both.

    Returns:
        ``{"dense_latency_ms": ..., "latency_ms": ..., "speedup": dense / pruned}``.
    """
    dense_ms, pruned_ms = _time_models(
        [dense, pruned], input_shape, batch_size=batch_size, warmup=warmup, repeats=repeats,
        threads=threads, device=device,
    )
    speedup = dense_ms / pruned_ms if pruned_ms > 0 else math.inf
    return {"dense_latency_ms": dense_ms, "latency_ms": pruned_ms, "speedup": speedup}


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on inputs ``x`` (N, ...) with integer labels ``y`` (N,).

    Evaluated in eval mode without gradients, ``batch_size`` examples at a time on the
    model's device; the model's train/eval flag is restored afterwards.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as inputs, at least one; got {len(x)}, {len(y)}")
    device = _device(model)
    correct = 0
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size].to(device))
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size].to(device)).sum())
    return correct / len(x)
