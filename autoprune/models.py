"""Built-in models, and how ``model.name`` in a space file becomes an ``nn.Module``.

A model is named in one of three ways (see :func:`build_model`):

* a built-in from :data:`MODELS`: ``mlp``, ``lenet5``, ``small_cnn``, ``resnet20``;
* ``torchvision:<name>``: a torchvision classification model built from scratch;
* ``package.module:function``: a user function returning an ``nn.Module``.

Every builder receives the data's ``in_channels``, ``num_classes`` and per-sample
``input_shape`` (``(C, H, W)`` for images, ``(D,)`` for flat data) plus ``model.args`` as
keyword arguments. Builders do not seed: call ``torch.manual_seed`` first for reproducible
initial weights.

Layer naming. Pruning addresses layers by qualified module name (as in
``model.named_modules()``); the ``space.layers`` and ``space.exclude`` patterns match these
names. The built-ins keep them short and stable:

=============  ===================================================================
``mlp``        ``classifier.0``, ``classifier.2``, ``classifier.4`` ... (Linear; the
               ReLUs sit at the odd indices; the last one is the output layer)
``lenet5``     ``features.0``, ``features.3`` (Conv2d); ``classifier.0``,
               ``classifier.2``, ``classifier.4`` (Linear)
``small_cnn``  ``features.0``, ``features.4`` (Conv2d; each block is conv, bn, relu,
               pool); ``classifier.0``, ``classifier.2`` (Linear)
``resnet20``   ``conv1``; ``layer{1,2,3}.{0,1,2}.conv{1,2}``; the 1x1 shortcuts
               ``layer2.0.downsample.0`` and ``layer3.0.downsample.0``; ``fc``
=============  ===================================================================

:func:`prunable_layers` lists the conv and linear modules whose ``.weight`` gets pruned;
:func:`output_layer_name` names the classifier's output layer, whose output units (the
classes) are never removed.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model")

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RESERVED_ARGS = ("in_channels", "num_classes", "input_shape")


class _ShapeError(ValueError):
    """The data's input shape does not suit the model (reported against ``model.name``)."""


def _image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``input_shape``, or :class:`_ShapeError` for flat data."""
    if len(input_shape) != 3:
        raise _ShapeError(
            f"model {model!r} needs image data shaped (C, H, W); the data gives {tuple(input_shape)}"
        )
    c, h, w = (int(v) for v in input_shape)
    return c, h, w


def _int_list(value: Any, key: str) -> list[int]:
    """``value`` as a non-empty list of positive ints (an int counts as a list of one)."""
    items = [value] if isinstance(value, int) else value
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    ):
        raise ValueError(f"{key} must be a positive integer or a list of them, got {value!r}")
    return list(items)


def _mlp_stack(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear/ReLU pairs ending with a Linear to ``num_classes``: Linears at even indices."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Flatten, then ``classifier``: Linear-ReLU pairs and a final Linear (LeNet-300-100)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.classifier = _mlp_stack(in_features, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


class ConvNet(nn.Module):
    """``features`` (conv stack), adaptive average ``pool``, flatten, ``classifier``."""

    def __init__(self, features: nn.Sequential, pool: tuple[int, int], classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("mlp")
def mlp(
    in_channels: int,
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    hidden: Sequence[int] = (300, 100),
) -> nn.Module:
    """LeNet-300-100 by default: any input is flattened, then ``hidden`` ReLU layers.

    Prunable layers: ``classifier.0``, ``classifier.2``, ... (one per hidden layer plus the
    output layer, which is the last).
    """
    in_features = 1
    for v in input_shape:
        in_features *= int(v)
    return MLP(in_features, _int_list(hidden, "hidden"), num_classes)


@MODELS.register("lenet5")
def lenet5(
    in_channels: int, num_classes: int, input_shape: tuple[int, ...], *, hidden: Sequence[int] = (120, 84)
) -> nn.Module:
    """Classic LeNet-5: conv 6@5x5, max-pool, conv 16@5x5, max-pool, fc 120, fc 84, fc out.

    The first conv pads by 2 (28x28 stays 28x28, as usual for MNIST). The second conv pads
    only where the map is too small for an unpadded 5x5 kernel (8x8 digits), and an adaptive
    pool caps the map at 5x5, so 28x28 input gives the classic 16*5*5 = 400 features and
    any input of at least 4x4 works. Prunable layers: ``features.0``, ``features.3``,
    ``classifier.0``, ``classifier.2``, ``classifier.4``.
    """
    c, h, w = _image_shape(input_shape, "lenet5")
    h1, w1 = h // 2, w // 2
    if h1 < 2 or w1 < 2:
        raise _ShapeError(f"model 'lenet5' needs images of at least 4x4; the data gives {h}x{w}")
    pad = (0 if h1 >= 6 else 2, 0 if w1 >= 6 else 2)
    h2, w2 = (h1 + 2 * pad[0] - 4) // 2, (w1 + 2 * pad[1] - 4) // 2
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=pad),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    pool = (min(5, h2), min(5, w2))
    classifier = _mlp_stack(16 * pool[0] * pool[1], _int_list(hidden, "hidden"), num_classes)
    return ConvNet(features, pool, classifier)


@MODELS.register("small_cnn")
def small_cnn(
    in_channels: int,
    num_classes: int,
    input_shape: tuple[int, ...],
    *,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    batch_norm: bool = True,
) -> nn.Module:
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) then two Linear layers.

    One block per entry of ``channels``; the convs are ``features.0``, ``features.4``, ...
    (``batch_norm: false`` puts an ``nn.Identity`` in the norm slot, so the names stay the
    same). An adaptive average pool caps the final map at 4x4 before ``classifier.0``
    (Linear to ``hidden``) and ``classifier.2`` (the output layer). Works for any image
    whose sides survive the poolings (at least 4x4 with two blocks).
    """
    c, h, w = _image_shape(input_shape, "small_cnn")
    widths = _int_list(channels, "channels")
    (hidden_width,) = _int_list(hidden, "hidden")
    layers: list[nn.Module] = []
    for out in widths:
        norm: nn.Module = nn.BatchNorm2d(out) if batch_norm else nn.Identity()
        layers += [nn.Conv2d(c, out, 3, padding=1), norm, nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise _ShapeError(
            f"model 'small_cnn' with {len(widths)} blocks needs images of at least "
            f"{2 ** len(widths)}x{2 ** len(widths)}; the data gives {input_shape[1]}x{input_shape[2]}"
        )
    pool = (min(4, h), min(4, w))
    classifier = nn.Sequential(
        nn.Linear(c * pool[0] * pool[1], hidden_width),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_width, num_classes),
    )
    return ConvNet(nn.Sequential(*layers), pool, classifier)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; a 1x1 conv-BN ``downsample`` on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2) with 1x1 conv shortcuts."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            stage = [BasicBlock(in_planes if b == 0 else planes, planes, 2 if i and not b else 1)
                     for b in range(blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@MODELS.register("resnet20")
def resnet20(
    in_channels: int, num_classes: int, input_shape: tuple[int, ...], *, width: float = 1.0
) -> nn.Module:
    """CIFAR-style ResNet-20: a 3x3 stem, 3 stages of 3 BasicBlocks, global pool, ``fc``.

    Stage widths are 16/32/64 times ``width`` (rounded, at least 1); stages 2 and 3 halve
    the resolution. Shortcuts that change shape are 1x1 conv + BN ("option B") named
    ``layer{2,3}.0.downsample.{0,1}``, so channel pruning only has to keep residual sums
    aligned. Works for any image of at least 1x1.
    """
    c, _, _ = _image_shape(input_shape, "resnet20")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    widths = [max(1, round(base * width)) for base in (16, 32, 64)]
    return CifarResNet(c, num_classes, widths, blocks=3)


def _in_channels(input_shape: Sequence[int]) -> int:
    """Channels of an image shape ``(C, H, W)``; 1 for flat ``(D,)`` data."""
    return int(input_shape[0]) if len(input_shape) >= 2 else 1


def accepted_keywords(fn: Callable[..., Any], names: Sequence[str]) -> list[str]:
    """Which of ``names`` ``fn`` accepts as keywords (all of them if it takes ``**kwargs``).

    Used to call user functions with only the data keywords they declare.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return list(names)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return list(names)
    ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n in names if n in params and params[n].kind in ok]


def import_callable(spec: str, *, key: str, where: str = "") -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable; errors name ``key``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AutopruneError(f"{where}{key}: {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure inside user code while importing
        raise AutopruneError(
            f"{where}{key}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AutopruneError(f"{where}{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AutopruneError(f"{where}{key}: {spec!r} is not callable")
    return obj


def _torchvision_builder(tv_name: str, where: str) -> ModelBuilder:
    """A builder for ``torchvision:<tv_name>`` (classification models only)."""
    from torchvision import models as tvm

    valid = tvm.list_models(module=tvm)
    if tv_name not in valid:
        raise AutopruneError(
            f"{where}model.name: unknown torchvision classification model {tv_name!r}; "
            f"valid: {', '.join(valid)}"
        )

    def build(in_channels: int, num_classes: int, input_shape: tuple[int, ...], **args: Any) -> nn.Module:
        _image_shape(input_shape, f"torchvision:{tv_name}")
        args.setdefault("weights", None)
        model = tvm.get_model(tv_name, num_classes=num_classes, **args)
        _adapt_first_conv(model, in_channels, f"torchvision:{tv_name}")
        return model

    return build


def _adapt_first_conv(model: nn.Module, in_channels: int, label: str) -> None:
    """Replace the first ``Conv2d`` (the stem) by a fresh one taking ``in_channels``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            if module.groups != 1:
                raise _ShapeError(f"model {label!r} cannot be adapted to {in_channels} input channels")
            stem = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            model.set_submodule(name, stem)
            return
    raise _ShapeError(f"model {label!r} has no Conv2d stem to adapt to {in_channels} input channels")


def _resolve(name: str, where: str) -> tuple[ModelBuilder, bool]:
    """The builder for ``name`` and whether it takes the data keywords unconditionally."""
    if name.startswith("torchvision:"):
        return _torchvision_builder(name.partition(":")[2], where), True
    if name in MODELS:
        return MODELS.get(name), True
    if ":" not in name:
        raise AutopruneError(
            f"{where}model.name: {MODELS.unknown_message(name)}; "
            "or torchvision:<name>, or package.module:function"
        )
    return import_callable(name, key="model.name", where=where), False


def _check_reserved(args: dict[str, Any], given: dict[str, Any], where: str) -> None:
    """Drop ``num_classes``-like keys from ``args`` that agree with the data; reject others."""
    for key in _RESERVED_ARGS:
        if key in args:
            value = args.pop(key)
            expected = given[key]
            if isinstance(value, list):
                value = tuple(value)
            if value != expected:
                raise AutopruneError(
                    f"{where}model.args.{key}: {value!r} does not match the data ({expected!r}); "
                    "leave it out, it is taken from the data"
                )


def _dry_run(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str, where: str) -> None:
    """Run one eval-mode forward pass and check the output is ``(batch, num_classes)``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_input(input_shape, batch_size=2))
    except Exception as exc:  # the model cannot take this data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AutopruneError(
            f"{where}model.name: {name!r} fails on inputs shaped {input_shape}: {first}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AutopruneError(
            f"{where}model.name: {name!r} must return logits shaped (batch, {num_classes}); got {got}"
        )


def build_model(
    name: str,
    args: Mapping[str, Any] | None,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    where: str = "",
) -> nn.Module:
    """Build the model ``name`` for data of per-sample ``input_shape`` and ``num_classes``.

    ``name`` is one of:

    * a built-in of :data:`MODELS`, called as ``builder(in_channels, num_classes,
      input_shape, **args)``;
    * ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None,
      num_classes=num_classes, **args)`` for any classification model of
      ``torchvision.models.list_models``. When the data has other than 3 channels the first
      ``Conv2d`` in registration order (the stem) is replaced by a freshly initialised one
      with the right input channels: this covers the ResNet/ResNeXt/Wide-ResNet, VGG,
      AlexNet, MobileNet, MNASNet, EfficientNet, RegNet, DenseNet, ShuffleNet, SqueezeNet,
      ConvNeXt, GoogLeNet/Inception (``transform_input`` off), ViT, Swin and MaxViT.
      Models with fixed input sizes (ViT) still need inputs of that size;
    * ``package.module:function``: imported and called with those of ``in_channels``,
      ``num_classes`` and ``input_shape`` it accepts as keywords (all three if it takes
      ``**kwargs``, none if it takes none of them) plus ``**args``; it must return an
      ``nn.Module``.

    ``in_channels`` is ``input_shape[0]`` for ``(C, H, W)`` data and 1 for flat ``(D,)``
    data. ``args`` may repeat ``num_classes``/``in_channels``/``input_shape`` only with the
    data's values. The model is checked with one eval-mode forward pass on zeros, which must
    give logits shaped ``(batch, num_classes)``; its train/eval mode is left as built.
    Problems raise :class:`AutopruneError` prefixed with ``where`` and naming ``model.name``
    or ``model.args``.
    """
    if not isinstance(name, str) or not name:
        raise AutopruneError(f"{where}model.name: must be a non-empty string, got {name!r}")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise AutopruneError(f"{where}model.args: must be a mapping, got {type(args).__name__}")
    input_shape = tuple(int(v) for v in input_shape)
    given = {"in_channels": _in_channels(input_shape), "num_classes": int(num_classes),
             "input_shape": input_shape}
    kwargs = dict(args)
    _check_reserved(kwargs, given, where)
    builder, takes_data = _resolve(name, where)
    data_kwargs = given if takes_data else {k: given[k] for k in accepted_keywords(builder, _RESERVED_ARGS)}
    try:
        model = builder(**data_kwargs, **kwargs)
    except _ShapeError as exc:
        raise AutopruneError(f"{where}model.name: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise AutopruneError(f"{where}model.args: {name!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise AutopruneError(
            f"{where}model.name: {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    _dry_run(model, input_shape, given["num_classes"], name, where)
    return model


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv (1d/2d/3d) and ``nn.Linear`` modules by qualified name, in registration order.

    Their ``.weight`` is what gets pruned (conv weights ``(out, in/groups, *kernel)``,
    linear weights ``(out, in)``); the output channels/units are dim 0.
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (*_CONV_TYPES, nn.Linear))
    }


def output_layer_name(model: nn.Module) -> str:
    """The classifier's output layer: the last ``nn.Linear`` in registration order.

    Falls back to the last prunable layer (e.g. SqueezeNet's final 1x1 conv). Pruning never
    removes this layer's output units. Raises :class:`AutopruneError` if the model has no
    conv or linear layer at all.
    """
    layers = prunable_layers(model)
    if not layers:
        raise AutopruneError("model.name: the model has no conv or linear layer to prune")
    linears = [name for name, m in layers.items() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else list(layers)[-1]


def example_input(
    input_shape: Sequence[int], batch_size: int = 1, *, seed: int | None = None
) -> torch.Tensor:
    """A float32 batch shaped ``(batch_size, *input_shape)``: zeros, or seeded N(0, 1).

    With ``seed`` the values come from a private ``torch.Generator``, so the global RNG is
    untouched.
    """
    shape = (batch_size, *(int(v) for v in input_shape))
    if seed is None:
        return torch.zeros(shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
