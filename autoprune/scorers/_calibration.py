"""Running calibration data through a model without changing it.

Data-driven scorers need either the gradient of the loss with respect to each prunable
layer's weight, or what each layer sees and produces (its input and output activations).
Both are collected here, with the model in eval mode, and everything that was touched is
put back afterwards: each module's ``training`` flag and each layer parameter's
``requires_grad``. Gradients are taken with :func:`torch.autograd.grad`, so no ``.grad``
buffer of the model is ever written.

Gradients are taken with respect to the tensor a layer actually multiplies by, captured by
a forward hook (``module.weight`` at forward time), so layers masked by
``torch.nn.utils.prune`` (where ``weight = weight_orig * weight_mask``) work too.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.scorers._base import Calibration

ForwardCallback = Callable[[str, nn.Module, Tensor, Tensor], None]
BatchCallback = Callable[[int, dict[str, Tensor]], None]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every module's own ``training`` flag after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def layers_require_grad(layers: Mapping[str, nn.Module]) -> Iterator[None]:
    """Make every parameter of ``layers`` require grad for the duration; restore the flags."""
    saved = [(p, p.requires_grad) for layer in layers.values() for p in layer.parameters()]
    for p, _ in saved:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def forward_hooks(layers: Mapping[str, nn.Module], callback: ForwardCallback) -> Iterator[None]:
    """Call ``callback(name, module, input, output)`` after each forward of each layer."""
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            callback(name, module, inputs[0], output)

        return hook

    try:
        for name, layer in layers.items():
            handles.append(layer.register_forward_hook(hook_for(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def batches(model: nn.Module, calibration: Calibration) -> Iterator[tuple[Tensor, Tensor]]:
    """The calibration batches moved to the device of ``model``'s first parameter."""
    device = next(iter(model.parameters())).device
    for inputs, labels in calibration:
        yield inputs.to(device), labels.to(device)


def run_forward(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration, callback: ForwardCallback
) -> None:
    """Run every calibration batch through ``model`` (eval mode, no grad) with a hook on each layer.

    ``callback(name, module, input, output)`` receives detached tensors; it accumulates
    whatever statistic the scorer needs.
    """

    def detached(name: str, module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        callback(name, module, inputs.detach(), output.detach())

    with ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.no_grad())
        stack.enter_context(forward_hooks(layers, detached))
        for inputs, _ in batches(model, calibration):
            model(inputs)


def run_gradients(
    model: nn.Module, layers: Mapping[str, nn.Module], calibration: Calibration, callback: BatchCallback
) -> None:
    """Call ``callback(batch_size, grads)`` for every calibration batch.

    ``grads[name]`` is ∂L_b/∂W for that layer's weight (shape of ``layer.weight``), where
    L_b is the mean cross-entropy of batch b computed in eval mode. A layer the forward
    pass does not reach gets zeros. A layer called several times per forward (shared
    weights) gets the sum over its calls.
    """
    used: dict[str, list[Tensor]] = {name: [] for name in layers}

    def remember(name: str, module: nn.Module, inputs: Tensor, output: Tensor) -> None:
        weight = module.weight
        if not any(weight is seen for seen in used[name]):
            used[name].append(weight)

    with ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        stack.enter_context(layers_require_grad(layers))
        stack.enter_context(forward_hooks(layers, remember))
        for inputs, labels in batches(model, calibration):
            for seen in used.values():
                seen.clear()
            with torch.enable_grad():
                loss = F.cross_entropy(model(inputs), labels)
            flat = [(name, w) for name, ws in used.items() for w in ws]
            found = torch.autograd.grad(loss, [w for _, w in flat], allow_unused=True) if flat else ()
            grads = {name: torch.zeros_like(layer.weight, dtype=torch.float32) for name, layer in layers.items()}
            for (name, _), grad in zip(flat, found):
                if grad is not None:
                    grads[name] += grad.detach().float()
            callback(int(labels.shape[0]), grads)
