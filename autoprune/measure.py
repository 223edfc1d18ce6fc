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
* ``latency_ms``: median wall time of one forward pass of the model **as deployed**
  (see below) over ``repeats`` timed runs after ``warmup`` untimed ones, under
  :func:`torch.inference_mode`, with torch's thread count fixed for the measurement (and
  restored after), synchronising CUDA. ``speedup`` = dense latency / pruned latency, timed
  by :func:`measure_latency_pair` with the two models' runs interleaved so that machine
  noise hits both alike.
* ``accuracy``: top-1 fraction correct, in eval mode without gradients.

Latency is that of the **deployed form** (:func:`deployed_forms`), the model as one would
serve it, never the training-time module: a copy in eval mode with every batch norm folded
into the conv or linear layer feeding it (:func:`fold_batch_norm`), and, for models with 2-D
convolutions, in whichever memory format (contiguous NCHW or ``channels_last``) runs the
model faster, chosen by a short interleaved probe before the timed runs
(:func:`time_deployed`). Why: on CPU, ``aten::max_pool2d`` always runs
``max_pool2d_with_indices`` (grad mode or not, the indices are computed and dropped), and
its NCHW kernel is scalar while its ``channels_last`` kernel is vectorised over channels —
about 7× faster for 32 channels at batch 256 on an AVX2 core; folded batch norms cost
nothing. Without this, pooling and batch norm (whose work shrinks with the channel count,
not with the MACs) were about half of a small CNN's time, which no deployment pays. The
caller's model is never changed: folding and layout work on copies (a model with nothing to
fold and no 2-D convolution is timed as it is, in eval mode, its mode restored after).

With ``runtime="onnxruntime"`` (``latency.runtime`` in a space file) the deployed form is
instead the model exported to ONNX exactly as ``autoprune export`` writes ``model.onnx``
(batch norm folded first), run by onnxruntime on the CPU with ``threads`` intra-op threads:
the latency of that file as served by onnxruntime, whose per-op cost at small batches is a
fraction of eager torch's. Exporting costs a few seconds per model; the dense model's export
is cached per process (keyed by its architecture and weights).

A masked layer is recognised by the ``weight_orig`` / ``weight_mask`` pair that both
:mod:`autoprune.prune` and :mod:`torch.nn.utils.prune` use; its effective weight is their
product.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import io
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
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


def _is_masked(model: nn.Module) -> bool:
    """Whether a layer's weight is recomputed from ``weight_orig`` and a mask on every call."""
    return any("weight_orig" in module._parameters for module in model.modules())


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each batch norm folded into the layer feeding it.

    A ``BatchNorm{1,2,3}d`` (with running statistics) whose input is the output of a conv or
    ``nn.Linear`` used by nothing else is merged into that layer's weight and bias, as
    inference engines do; the copy computes the same function as ``model`` in eval mode
    (up to float rounding). Done by :func:`torch.fx.experimental.optimization.fuse`, which
    traces the model symbolically; a model that cannot be traced (data-dependent control
    flow) or has masked layers (their weight is recomputed on every call) is returned as an
    unfolded eval-mode copy. ``model`` itself is untouched.
    """
    from torch.fx.experimental.optimization import fuse

    clone = copy.deepcopy(model).eval()
    if _is_masked(clone) or not any(isinstance(m, _BatchNorm) for m in clone.modules()):
        return clone
    try:
        return fuse(clone, inplace=True).eval()
    except Exception:  # noqa: BLE001 - any tracing failure of user code: time it unfolded
        return clone


def deployed_forms(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, Tensor]]:
    """The candidate deployed forms of ``model`` for input ``example``: ``(layout, model, input)``.

    ``contiguous``: :func:`fold_batch_norm` of ``model`` (or ``model`` itself when it has no
    batch norm: nothing to fold, no copy). For a 4-D input and a model with 2-D
    convolutions also ``channels_last``: the folded copy and the input in that memory
    format (pooling, convolution and element-wise kernels then run vectorised over
    channels). :func:`time_deployed` keeps the faster one; every form is on ``example``'s
    device.
    """
    has_norm = any(isinstance(m, _BatchNorm) for m in model.modules())
    folded = fold_batch_norm(model) if has_norm else model
    folded = _on_device(folded, example.device)
    forms = [("contiguous", folded, example)]
    if example.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        last = copy.deepcopy(folded).eval().to(memory_format=torch.channels_last)
        forms.append(("channels_last", last, example.contiguous(memory_format=torch.channels_last)))
    return forms


@dataclass(frozen=True)
class DeployedTiming:
    """One model's timing by :func:`time_deployed`.

    Attributes:
        latency_ms: median forward ms of the chosen form over the timed runs.
        layout: the memory format of the chosen form (``contiguous`` or ``channels_last``).
        candidates: the layouts that were probed.
    """

    latency_ms: float
    layout: str
    candidates: list[str]


RUNTIMES = ("torch", "onnxruntime")
_ONNX_CACHE: dict[str, Path] = {}


def _onnx_file(model: nn.Module, input_shape: Sequence[int]) -> Path:
    """``model`` (batch norm folded, CPU) exported to ONNX in a per-process temp folder, cached by content."""
    from autoprune.onnx_export import export_onnx
    from autoprune.prune import remove_masks

    folded = fold_batch_norm(model).cpu()
    remove_masks(folded)  # a masked copy becomes an ordinary module with zeros, as exports are
    digest = hashlib.sha256(repr(folded).encode() + repr(tuple(input_shape)).encode())
    for name, tensor in folded.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = digest.hexdigest()
    if key not in _ONNX_CACHE or not _ONNX_CACHE[key].is_file():
        folder = Path(tempfile.mkdtemp(prefix="autoprune-onnx-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "model.onnx"
        export_onnx(folded, path, torch.randn(2, *input_shape))
        _ONNX_CACHE[key] = path
    return _ONNX_CACHE[key]


def _onnx_timer(model: nn.Module, example: Tensor, threads: int) -> Callable[[], float]:
    """A function running ``model``'s exported ONNX file on ``example`` in onnxruntime, returning ms."""
    from autoprune.onnx_export import onnx_session

    session = onnx_session(_onnx_file(model, tuple(example.shape[1:])), threads=threads)
    feed = {"input": example.detach().cpu().numpy()}

    def run() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - start) * 1000.0

    return run


def _time_onnx(models: Sequence[nn.Module], example: Tensor, *, warmup: int, repeats: int,
               threads: int) -> list[DeployedTiming]:
    runs = [_onnx_timer(model, example, threads) for model in models]
    for _ in range(max(1, warmup)):
        for run in runs:
            run()
    times = _interleaved(runs, repeats)
    return [DeployedTiming(statistics.median(series), "onnxruntime", ["onnxruntime"]) for series in times]


def _interleaved(runs: Sequence[Callable[[], float]], repeats: int) -> list[list[float]]:
    """``repeats`` timed rounds over ``runs``, order alternating each round; ms per run."""
    times: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
        for index in order:
            times[index].append(runs[index]())
    return times


def _fastest_form(forms: Sequence[tuple[str, nn.Module, Tensor]], *, warmup: int, probes: int) -> int:
    """Index of the form of ``forms`` that ran faster in ``probes`` interleaved runs.

    Each form first gets ``warmup`` untimed runs (at least one: lazy initialisation), so the
    chosen form needs no further warm-up. With one candidate no probe runs.
    """
    runs = [_timer(form, x) for _, form, x in forms]
    for _ in range(max(1, warmup)):
        for run in runs:
            run()
    if len(forms) == 1:
        return 0
    medians = [statistics.median(series) for series in _interleaved(runs, probes)]
    return min(range(len(forms)), key=medians.__getitem__)


def time_deployed(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
    device: str | torch.device | None = None,
    runtime: str = "torch",
) -> list[DeployedTiming]:
    """Median forward ms of each model's deployed form, the models' timed runs interleaved.

    For each model the candidate forms of :func:`deployed_forms` are warmed up and probed
    (``min(5, repeats)`` interleaved runs each); the faster is kept. Then ``repeats``
    rounds time every kept form once, in alternating order, so slow phases of the machine
    hit all models alike. Everything runs with ``threads`` torch threads (restored after),
    under :func:`torch.inference_mode`, on ``device`` (default: the first model's device).
    The models passed in are not changed (their train/eval flag is restored).

    ``runtime="onnxruntime"`` times each model's exported ONNX file in onnxruntime on the CPU
    instead (module docstring), whatever ``device`` says; ``layout`` is then ``onnxruntime``.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch_size >= 1")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":  # exports work on eval-mode copies: the models are not touched
        return _time_onnx(models, torch.randn(batch_size, *input_shape), warmup=warmup, repeats=repeats,
                          threads=threads)
    target = torch.device(device) if device is not None else _device(models[0])
    example = torch.randn(batch_size, *input_shape, device=target)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_threads(threads))
        for model in models:
            stack.enter_context(_eval_mode(model))
        with torch.no_grad():
            candidates = [deployed_forms(model, example) for model in models]
        stack.enter_context(torch.inference_mode())
        probes = min(5, repeats)
        chosen = [forms[_fastest_form(forms, warmup=warmup, probes=probes)] for forms in candidates]
        times = _interleaved([_timer(form, x) for _, form, x in chosen], repeats)
    return [
        DeployedTiming(statistics.median(series), layout, [name for name, _, _ in forms])
        for series, (layout, _, _), forms in zip(times, chosen, candidates)
    ]


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
    device: str | torch.device | None = None,
    runtime: str = "torch",
) -> float:
    """``latency_ms``: median forward time in milliseconds of ``model`` as deployed.

    Args:
        input_shape: one example's shape without the batch dimension.
        batch_size: examples per timed forward pass.
        warmup: untimed forward passes first (allocator, caches, lazy init).
        repeats: timed passes; the median resists outliers from other processes.
        threads: torch intra-op threads during the measurement, restored afterwards.
        device: where to run; default the model's device. A model elsewhere is copied there.
        runtime: ``torch`` (the deployed torch form) or ``onnxruntime`` (the exported ONNX
            file in onnxruntime, on the CPU).
    """
    return time_deployed(
        [model], input_shape, batch_size=batch_size, warmup=warmup, repeats=repeats,
        threads=threads, device=device, runtime=runtime,
    )[0].latency_ms


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
    runtime: str = "torch",
) -> dict[str, float]:
    """Latency of a dense and a pruned model timed in turn, and their ratio.

    Same settings as :func:`measure_latency`; the two models' runs alternate (dense first on
    even repeats, pruned first on odd ones) so slow phases of the machine hit both.

    Returns:
        ``{"dense_latency_ms": ..., "latency_ms": ..., "speedup": dense / pruned}``.
    """
    dense_timing, pruned_timing = time_deployed(
        [dense, pruned], input_shape, batch_size=batch_size, warmup=warmup, repeats=repeats,
        threads=threads, device=device, runtime=runtime,
    )
    dense_ms, pruned_ms = dense_timing.latency_ms, pruned_timing.latency_ms
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
