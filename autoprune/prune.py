"""Apply a pruning decision to a model, at one of two granularities.

**Unstructured masks** zero individual weights of conv and linear layers. A masked layer
keeps its dense weight as the parameter ``weight_orig`` and a 0/1 buffer ``weight_mask`` of
the same shape (the naming of :mod:`torch.nn.utils.prune`); a forward pre-hook recomputes
``weight = weight_orig * weight_mask`` before every forward, so masked weights are exactly
zero in every forward pass. Two modes:

* *static* (default): gradients reach only kept weights, and the masked entries of
  ``weight_orig`` are zeroed when masks are applied and after every optimizer step
  (:func:`enforce_masks`, run automatically by :func:`attach_optimizer`). Momentum, Adam's
  moment estimates and weight decay therefore never bring a pruned weight back; a weight
  re-admitted by a later mask restarts from zero.
* *dynamic* (dynamic network surgery, Guo et al. 2016): the forward pass still uses
  ``weight_orig * weight_mask``, but the gradient reaches ``weight_orig`` straight through the
  mask, so pruned weights keep training and a later mask computed from
  :func:`dense_weight` can bring them back with their updated values.

Updating a mask is one in-place copy into the buffer. :func:`remove_masks` makes pruning
permanent: zeros are baked into the weight, the hooks and buffers go away and the layer is an
ordinary module whose ``state_dict`` loads into a freshly built model.

Masks do not make a model faster: dense conv and matmul kernels multiply the zeros anyway,
and the model keeps its shapes, parameter count and MACs (only ``params_nonzero`` and
``sparsity`` change, and the state dict compresses better).

**Channel removal** physically deletes output channels of conv layers and output neurons of
linear layers, so every kernel that touches them gets smaller and the model really is
faster. Removing a channel has consequences elsewhere: the next layer's input channels, the
batch norm in between, the features a flatten hands to a linear layer, and every layer
coupled through a residual addition must lose the same channel. :func:`remove_channels`
finds those groups with Torch-Pruning's dependency graph (traced from an example input) and
removes each group's channels together; the result is a smaller ordinary ``nn.Module``.

Example::

    layers = prunable_layers(model)
    apply_masks(layers, masks)                 # masks: {name: bool tensor shaped like weight}
    attach_optimizer(layers, optimizer)        # keep pruned weights at zero after each step
    ...finetune...
    remove_masks(layers)                       # plain model, loadable state dict

    remove_channels(model, example_input, {"features.0": torch.tensor([0, 2, 5])})
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from autoprune.errors import AutopruneError

PRUNABLE_TYPES = (_ConvNd, nn.Linear)

MaskTarget = nn.Module | Mapping[str, nn.Module]


# --------------------------------------------------------------------------- masks


class _StraightThroughMask(torch.autograd.Function):
    """``weight * mask`` whose backward passes the gradient to ``weight`` unmasked."""

    @staticmethod
    def forward(ctx, weight: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class _MaskHook:
    """Forward pre-hook that recomputes ``module.weight`` from ``weight_orig`` and the mask.

    A module-level class (not a closure) so that masked models deep-copy and pickle with the
    hook reading the copy's own tensors.
    """

    def __init__(self, dynamic: bool) -> None:
        self.dynamic = dynamic

    def __call__(self, module: nn.Module, args: tuple) -> None:
        module.weight = _masked_weight(module, self.dynamic)


class _DetachHook:
    """Forward hook that detaches the ``weight`` attribute left behind by the forward pass.

    The autograd graph already holds the tensor it needs; the detached attribute keeps the
    module deep-copyable (non-leaf tensors refuse ``deepcopy``).
    """

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        module.weight = module.weight.detach()


class _RefreshHook:
    """``load_state_dict`` post-hook: recompute ``weight`` from the loaded tensors."""

    def __call__(self, module: nn.Module, incompatible_keys: object) -> None:
        with torch.no_grad():
            module.weight = _masked_weight(module, is_dynamic(module))


def _masked_weight(module: nn.Module, dynamic: bool) -> Tensor:
    """``weight_orig * weight_mask``, with a straight-through gradient when ``dynamic``."""
    if dynamic:
        return _StraightThroughMask.apply(module.weight_orig, module.weight_mask)
    return module.weight_orig * module.weight_mask


def _mask_hook(module: nn.Module) -> _MaskHook | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _MaskHook):
            return hook
    return None


def is_masked(module: nn.Module) -> bool:
    """Whether :func:`apply_masks` has masked ``module`` (and :func:`remove_masks` has not)."""
    return _mask_hook(module) is not None


def is_dynamic(module: nn.Module) -> bool:
    """Whether ``module`` is masked in dynamic (straight-through) mode."""
    hook = _mask_hook(module)
    return hook is not None and hook.dynamic


def dense_weight(module: nn.Module) -> Tensor:
    """The weight a scorer should rank: ``weight_orig`` of a masked layer, else ``weight``.

    In dynamic mode ``weight_orig`` holds trained values at masked positions, which is what
    lets a recomputed mask bring them back; in static mode it is zero there.
    """
    return module.weight_orig if is_masked(module) else module.weight


def _rename_parameter(module: nn.Module, old: str, new: str) -> None:
    """Rename a parameter in place, keeping the same object and its position in the order."""
    items = list(module._parameters.items())
    module._parameters.clear()
    for name, param in items:
        module._parameters[new if name == old else name] = param


def _as_mask(mask: Tensor, weight: Tensor, name: str) -> Tensor:
    """``mask`` as a 0/1 tensor in ``weight``'s dtype and device; nonzero entries mean keep."""
    if tuple(mask.shape) != tuple(weight.shape):
        shapes = f"{tuple(mask.shape)}, weight has {tuple(weight.shape)}"
        raise ValueError(f"mask for layer {name!r} has shape {shapes}")
    return (mask != 0).to(device=weight.device, dtype=weight.dtype)


def _start_masking(module: nn.Module, mask: Tensor, dynamic: bool) -> None:
    """Move ``weight`` to ``weight_orig``, add the ``weight_mask`` buffer and the hooks."""
    _rename_parameter(module, "weight", "weight_orig")
    module.register_buffer("weight_mask", mask)
    module.register_forward_pre_hook(_MaskHook(dynamic))
    module.register_forward_hook(_DetachHook())
    module.register_load_state_dict_post_hook(_RefreshHook())


def apply_masks(
    layers: Mapping[str, nn.Module], masks: Mapping[str, Tensor], *, dynamic: bool = False
) -> None:
    """Mask the weights of ``layers[name]`` with ``masks[name]`` for every name in ``masks``.

    Args:
        layers: conv and linear modules by qualified name (``models.prunable_layers``).
        masks: name -> tensor shaped like that layer's weight; nonzero/True keeps a weight.
            Layers without a mask are left as they are (masked or not).
        dynamic: dynamic network surgery: gradients reach masked weights straight through
            the mask, so a later mask can revive them. Otherwise (static) the masked entries
            of the dense weight are set to zero now and after every optimizer step.

    Calling it again on masked layers replaces their masks in place (cheap) and switches their
    mode to ``dynamic``; build optimizers before or after, the parameter objects are kept.
    """
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"mask given for {name!r}, which is not among the layers passed")
        module = layers[name]
        weight = dense_weight(module)
        value = _as_mask(mask, weight, name)
        hook = _mask_hook(module)
        if hook is None:
            _start_masking(module, value, dynamic)
        else:
            module.weight_mask.copy_(value)
            hook.dynamic = dynamic
    enforce_masks({name: layers[name] for name in masks})


def _masked_modules(target: MaskTarget) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every masked module in a layer mapping or a whole model."""
    items = target.named_modules() if isinstance(target, nn.Module) else target.items()
    for name, module in items:
        if is_masked(module):
            yield name, module


def enforce_masks(target: MaskTarget) -> None:
    """Zero the masked entries of static layers' ``weight_orig`` and refresh ``weight``.

    ``target`` is a layer mapping or a model. Run it after each optimizer step (see
    :func:`attach_optimizer`): momentum and Adam moments built up before pruning would
    otherwise move masked dense weights. Dynamic layers keep their dense weights; only their
    ``weight`` attribute is refreshed.
    """
    with torch.no_grad():
        for _, module in _masked_modules(target):
            dynamic = is_dynamic(module)
            if not dynamic:
                module.weight_orig.mul_(module.weight_mask)
            module.weight = _masked_weight(module, dynamic)


def attach_optimizer(target: MaskTarget, optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """Run :func:`enforce_masks` on ``target`` after every ``optimizer.step()``.

    Returns the handle; ``handle.remove()`` detaches it. Layers unmasked later are skipped.
    """
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: enforce_masks(target))


def current_masks(target: MaskTarget) -> dict[str, Tensor]:
    """Boolean copies of the masks of all masked layers in a layer mapping or model, by name."""
    return {name: module.weight_mask.detach().bool() for name, module in _masked_modules(target)}


def remove_masks(target: MaskTarget) -> None:
    """Make masks permanent: bake zeros into ``weight`` and drop ``weight_orig``, mask, hooks.

    Afterwards each layer is an ordinary module whose ``weight`` is the same parameter object
    as ``weight_orig`` was (optimizers keep working) and whose state dict has the original
    keys (``features.0.weight``), so it loads into a freshly built model.
    """
    for _, module in list(_masked_modules(target)):
        with torch.no_grad():
            module.weight_orig.mul_(module.weight_mask)
        ours = (_MaskHook, _DetachHook, _RefreshHook)
        registries = (
            module._forward_pre_hooks, module._forward_hooks, module._load_state_dict_post_hooks
        )
        for hooks in registries:
            for key in [k for k, h in hooks.items() if isinstance(h, ours)]:
                del hooks[key]
        del module._buffers["weight_mask"]
        del module.weight
        _rename_parameter(module, "weight_orig", "weight")


# --------------------------------------------------------------------------- channels


@dataclass
class _Cut:
    """Channels to remove from one dependency group, as indices of its root layer."""

    root: nn.Module
    handler: object
    remove: list[int]


def out_channels(module: nn.Module) -> int:
    """Output channels of a conv layer or output features of a linear layer."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _prunable(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _check_names(names: Collection[str], layers: Mapping[str, nn.Module], what: str) -> None:
    unknown = sorted(set(names) - set(layers))
    if unknown:
        raise AutopruneError(
            f"{what}: unknown layer {unknown[0]!r}; prunable layers: {', '.join(layers)}"
        )


def _keep_list(indices: Tensor | Sequence[int], module: nn.Module, name: str) -> list[int]:
    """Sorted unique channel indices; each in ``[0, out_channels)`` and at least one."""
    kept = sorted({int(i) for i in torch.as_tensor(indices).flatten().tolist()})
    count = out_channels(module)
    if not kept:
        raise ValueError(f"keep[{name!r}] is empty: a layer must keep at least one channel")
    if kept[0] < 0 or kept[-1] >= count:
        raise ValueError(f"keep[{name!r}] has indices outside [0, {count}) of that layer")
    return kept


def _build_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_input`` into a dependency graph, keeping its train mode."""
    masked = [name for name, _ in _masked_modules(model)]
    if masked:
        raise ValueError(f"layer {masked[0]!r} is masked: call remove_masks before channel removal")
    training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
    finally:
        model.train(training)


def _out_items(graph: tp.DependencyGraph, group: tp.Group) -> Iterator:
    """Group items that remove output channels (conv/linear/BN/element-wise ops)."""
    return (item for item in group if graph.is_out_channel_pruning_fn(item.dep.handler))


def _reaches_output(graph: tp.DependencyGraph, group: tp.Group) -> bool:
    """Whether removing this group's channels would change the shape of a model output.

    A traced node without consumers produces a model output.
    """
    for item in _out_items(graph, group):
        node = item.dep.target
        if node.type == tp.ops.OPTYPE.OUTPUT or not node.outputs:
            return True
    return False


def _vote(requests: list[dict[int, int]], keeps: list[list[int]], root_all: list[int]) -> set[int]:
    """Root channels to keep from several layers' requests (the coupled-layer rule).

    ``requests[i]`` maps layer i's channel index to the root channel; ``keeps[i]`` is what
    layer i asked to keep, layers in model order. Keep the ``max(len(keep))`` channels kept
    by most layers; ties go to channels the first layer kept, then to lower indices.
    """
    votes = dict.fromkeys(root_all, 0)
    for mapping, kept in zip(requests, keeps):
        for index in kept:
            votes[mapping[index]] += 1
    first = {requests[0][i] for i in keeps[0]}
    ranked = sorted(root_all, key=lambda c: (-votes[c], c not in first, c))
    return set(ranked[: max(len(kept) for kept in keeps)])


def _plan(
    model: nn.Module,
    example_input: Tensor,
    keep: Mapping[str, Tensor | Sequence[int]],
    protected: Collection[str],
) -> tuple[tp.DependencyGraph, list[_Cut], dict[str, nn.Module]]:
    """Trace the model and decide, per dependency group, which root channels to remove."""
    layers = _prunable(model)
    _check_names(keep, layers, "keep")
    _check_names(protected, layers, "protected")
    wanted = {name: _keep_list(indices, layers[name], name) for name, indices in keep.items()}
    graph = _build_graph(model, example_input)
    names = {module: name for name, module in layers.items()}
    order = {name: position for position, name in enumerate(layers)}
    cuts = []
    for group in graph.get_all_groups(root_module_types=PRUNABLE_TYPES):
        members = [
            (names[item.dep.target.module], item)
            for item in _out_items(graph, group)
            if item.dep.target.module in names
        ]
        members.sort(key=lambda member: order[member[0]])
        asked = [(name, item) for name, item in members if name in wanted]
        if not asked or _reaches_output(graph, group):
            continue
        if any(name in protected for name, _ in members):
            continue
        requests = [dict(zip(item.idxs, item.root_idxs)) for _, item in asked]
        kept = _vote(requests, [wanted[name] for name, _ in asked], list(group[0].idxs))
        remove = sorted(set(group[0].idxs) - kept)
        if remove:
            cuts.append(_Cut(group[0].dep.target.module, group[0].dep.handler, remove))
    return graph, cuts, layers


def remove_channels(
    model: nn.Module,
    example_input: Tensor,
    keep: Mapping[str, Tensor | Sequence[int]],
    *,
    protected: Collection[str] = (),
) -> dict[str, int]:
    """Physically remove output channels, with everything coupled to them, in place.

    Args:
        model: an unmasked model (call :func:`remove_masks` first).
        example_input: a batch the model accepts (e.g. shape ``(1, C, H, W)``), used to
            trace the dependency graph.
        keep: layer name -> indices of that layer's output channels (conv) or neurons
            (linear) to keep, relative to its current channels. Every other channel of
            the layer is removed, together with the next layers' input channels, the batch
            norm entries, the flattened features of a following linear layer and the
            channels of all layers coupled to it by residual additions.
        protected: layers whose output channels are never removed (nor their coupled
            partners'); ``keep`` entries for them are ignored. Layers producing a model
            output are always protected, so the output layer keeps all its units.

    Coupled layers: the layers of one dependency group (e.g. all convs adding into one
    residual stream) must keep the same channels. When several of them are in ``keep``,
    the group keeps as many channels as the largest request, choosing the channels kept
    by the most requests; ties go to the first such layer in model order, then to lower
    indices. Identical requests are kept exactly; a lone request is kept exactly.

    Layers not in ``keep`` change only as coupled consequences. Torch-Pruning replaces the
    pruned parameters with new ones, so build optimizers after this call.

    Returns:
        Output channels (features) of every conv and linear layer after removal, by name.
    """
    graph, cuts, layers = _plan(model, example_input, keep, protected)
    for cut in cuts:
        graph.get_pruning_group(cut.root, cut.handler, cut.remove).prune()
    return {name: out_channels(module) for name, module in layers.items()}


def _zero_rows(module: nn.Module, indices: list[int]) -> None:
    """Zero output channels ``indices`` of a conv/linear layer (weight and bias) or a BN."""
    index = torch.as_tensor(indices, dtype=torch.long, device=module.weight.device)
    with torch.no_grad():
        if isinstance(module, _ConvNd) and module.transposed:
            module.weight.index_fill_(1, index, 0.0)
        else:
            module.weight.index_fill_(0, index, 0.0)
        if module.bias is not None:
            module.bias.index_fill_(0, index, 0.0)


def zero_channels(
    model: nn.Module,
    example_input: Tensor,
    keep: Mapping[str, Tensor | Sequence[int]],
    *,
    protected: Collection[str] = (),
) -> dict[str, int]:
    """Zero, without removing, exactly the channels :func:`remove_channels` would remove.

    Same arguments and coupled-layer rule as :func:`remove_channels`. For each removed
    channel the filter and bias of every coupled conv/linear layer and the scale and shift
    of every coupled batch norm are set to zero, so in eval mode the channel outputs exactly
    zero after its batch norm (or layer) and removing it afterwards leaves the model's
    outputs unchanged. (Exact for conv/linear/BatchNorm networks; other normalisations are
    not zeroed.)

    Returns:
        Per conv/linear layer, the number of output channels not zeroed by this call.
    """
    graph, cuts, layers = _plan(model, example_input, keep, protected)
    zeroed = {name: 0 for name in layers}
    names = {module: name for name, module in layers.items()}
    for cut in cuts:
        for item in _out_items(graph, graph.get_pruning_group(cut.root, cut.handler, cut.remove)):
            module = item.dep.target.module
            if isinstance(module, _BatchNorm) and module.affine:
                _zero_rows(module, list(item.idxs))
            elif module in names:
                _zero_rows(module, list(item.idxs))
                zeroed[names[module]] += len(item.idxs)
    return {name: out_channels(module) - zeroed[name] for name, module in layers.items()}
