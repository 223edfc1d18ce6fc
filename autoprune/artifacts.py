"""The exported pruned model: one folder that production can use without autoprune's search.

``autoprune export`` and ``autoprune apply`` write the same folder::

    policy.yaml     the policy (``policy:``, what :func:`autoprune.load_policy` reads) and,
                    to be self-contained: what it reached (``reached:`` overall and per-layer
                    sparsity, per-layer output channels), the ``metrics`` it achieved, the
                    ``model`` and ``data`` specs, the ``latency`` settings, the ``dense``
                    checkpoint's hash and accuracy, and its ``source`` (study, trial,
                    autoprune version)
    weights.pt      the pruned model's state dict (``torch.save`` of tensors only: it loads
                    with ``torch.load(..., weights_only=True)``; no pickled code)
    model.onnx      the same model for ONNX runtimes: input ``input`` with a dynamic batch
                    dimension, output ``logits``; checked against torch with onnxruntime
    metrics.json    the metrics, including ``test_accuracy`` (measured once, at export)
    MODEL_CARD.md   a short human summary

Channel pruning changes the architecture. The state dict alone does not say how to build it,
so ``reached.layer_channels`` records every prunable layer's output channels:
:func:`rebuild_architecture` builds the model from its spec and removes channels down to
those counts (keeping the first ``k``; which channels were kept is already baked into the
weights), and :func:`load_pruned` then loads ``weights.pt`` into it. Unstructured pruning
keeps the dense architecture; its zeros are in the weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.onnx_export import export_onnx, onnx_max_abs_diff
from autoprune.models import build_model, example_input, output_layer_name, prunable_layers
from autoprune.policy import Policy

POLICY_FILE = "policy.yaml"
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
ONNX_TOLERANCE = 1e-4
ONNX_CHECK_EXAMPLES = 256


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def rebuild_architecture(model: nn.Module, layer_channels: Mapping[str, int], input_shape: tuple[int, ...], *,
                         output_layer: str, where: str = "layer_channels") -> nn.Module:
    """A copy of ``model`` with each prunable layer cut down to ``layer_channels[name]`` outputs.

    The first ``k`` output channels of each layer are kept, with everything coupled to them
    (next layers' inputs, batch norms, residual partners) removed by
    :func:`autoprune.prune.remove_channels`. The result has the shapes of the pruned model
    a trial produced (its weights are ``model``'s, which is all that timing needs; loading a
    pruned state dict gives the pruned model). Layers missing from ``layer_channels`` keep
    their channels.

    Raises:
        AutopruneError: a layer is unknown, asks for more channels than it has, or the
            coupled-layer rules make the requested shapes impossible.
    """
    from autoprune.prune import out_channels, remove_channels

    clone = copy.deepcopy(model).eval()
    layers = prunable_layers(clone)
    unknown = [name for name in layer_channels if name not in layers]
    if unknown:
        raise AutopruneError(f"{where}: layer {unknown[0]!r} is not a prunable layer of the model; "
                             f"prunable layers: {', '.join(layers)}")
    keep = {}
    for name, count in layer_channels.items():
        have = out_channels(layers[name])
        if not 1 <= int(count) <= have:
            raise AutopruneError(f"{where}: layer {name!r} has {have} output channels, cannot keep {count}")
        if int(count) < have:
            keep[name] = list(range(int(count)))
    if keep:
        device = next(iter(clone.parameters())).device
        remove_channels(clone, example_input(input_shape).to(device), keep, protected={output_layer})
    reached = {name: out_channels(module) for name, module in prunable_layers(clone).items()}
    wrong = [name for name, count in layer_channels.items() if reached.get(name) != int(count)]
    if wrong:
        name = wrong[0]
        raise AutopruneError(f"{where}: cannot rebuild the pruned architecture: layer {name!r} ends with "
                             f"{reached.get(name)} channels, expected {layer_channels[name]}")
    return clone


def check_out_folder(folder: str | Path) -> Path:
    """``--out`` as a path, refused (one line) when it exists and is not a folder.

    Export and apply call it before any work, so a wrong ``--out`` costs nothing.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AutopruneError(f"--out {folder}: exists and is not a folder; give a new or an existing folder")
    return folder


@dataclass
class Written:
    """What :func:`write_artifacts` wrote and checked."""

    folder: Path
    files: list[Path]
    onnx_max_abs_diff: float


def write_artifacts(folder: str | Path, *, model: nn.Module, policy: Policy, document: dict[str, Any],
                    metrics: dict[str, Any], check_inputs: torch.Tensor, card: str,
                    tolerance: float = ONNX_TOLERANCE) -> Written:
    """Write the export folder (see the module docstring) and check the ONNX model.

    Args:
        model: the pruned model (plain module: masks baked in, channels removed).
        policy: the policy, written under ``policy:``.
        document: the other sections of ``policy.yaml`` (``reached``, ``model``, ``data``, ...).
        metrics: written to ``metrics.json`` (with ``onnx_max_abs_diff`` added) and to
            ``policy.yaml``'s ``metrics`` section.
        check_inputs: real inputs (validation split) for the ONNX parity check; the first
            :data:`ONNX_CHECK_EXAMPLES` are used.
        card: the text of ``MODEL_CARD.md``.
        tolerance: the largest accepted absolute difference of the logits.

    Raises:
        AutopruneError: the folder cannot be written, or ONNX and torch disagree beyond
            ``tolerance``.
    """
    folder = check_out_folder(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutopruneError(f"--out {folder}: cannot create it ({exc.strerror or exc})") from None
    model = model.cpu().eval()
    onnx_path = folder / ONNX_FILE
    inputs = check_inputs[:ONNX_CHECK_EXAMPLES]
    difference = _checked_onnx(model, onnx_path, inputs, tolerance, remove_folder=created)
    weights = folder / WEIGHTS_FILE
    _atomic(weights, lambda tmp: torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp))
    metrics = {**metrics, "onnx_max_abs_diff": difference}
    full = {"policy": policy.to_dict(), **document, "metrics": _plain(metrics)}
    source = document.get("source", {})
    header = (f"# autoprune {source.get('autoprune_version', '')}: pruning policy and what it reached"
              + (f" (study {source['study']}, trial {source['trial']})" if "study" in source else "") + ".\n"
              "# Apply it to a dense checkpoint: autoprune apply --policy policy.yaml --checkpoint dense.pt --out DIR\n")
    text = header + yaml.safe_dump(full, sort_keys=False, default_flow_style=None, allow_unicode=True)
    policy_path = folder / POLICY_FILE
    _atomic(policy_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    metrics_path = folder / METRICS_FILE
    _atomic(metrics_path, lambda tmp: tmp.write_text(json.dumps(_plain(metrics), indent=2) + "\n"))
    card_path = folder / CARD_FILE
    _atomic(card_path, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    return Written(folder, [policy_path, weights, onnx_path, metrics_path, card_path], difference)


def _checked_onnx(model: nn.Module, path: Path, inputs: torch.Tensor, tolerance: float, *, remove_folder: bool) -> float:
    """Export ``model`` to ``path`` only if onnxruntime agrees with torch on ``inputs``; the largest difference.

    The model is exported next to ``path`` and checked first: when it disagrees, nothing of
    the export is left (the folder too, if this export created it) and an earlier export in
    the folder is untouched.
    """
    staged = path.with_name(f".{path.name}.check")
    try:
        export_onnx(model, staged, inputs[:2])
        difference = onnx_max_abs_diff(staged, model, inputs)
        if not difference <= tolerance:
            raise AutopruneError(f"{path}: onnxruntime and torch disagree: max abs difference of the logits "
                                 f"{difference:.3g} > tolerance {tolerance:g}; nothing was written")
        os.replace(staged, path)
        return difference
    except BaseException:
        staged.unlink(missing_ok=True)
        if remove_folder:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(value: Any) -> Any:
    """``value`` with numpy/torch scalars and tuples turned into YAML/JSON-safe Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def read_document(path: str | Path) -> dict[str, Any]:
    """An exported ``policy.yaml`` as a mapping (safe YAML); one-line errors otherwise."""
    from autoprune.space import read_yaml

    raw = read_yaml(path, what="policy file")
    if not isinstance(raw, dict) or not isinstance(raw.get("policy"), dict):
        raise AutopruneError(f"{path}: not an exported policy.yaml (no 'policy:' section)")
    return raw


def model_section(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``model:`` section of an exported policy, checked for what building the model needs."""
    spec = document.get("model")
    needed = ("name", "input_shape", "num_classes")
    if not isinstance(spec, dict) or any(key not in spec for key in needed):
        raise AutopruneError(f"{source}: needs a 'model:' section with {', '.join(needed)} "
                             "(an exported policy.yaml has one)")
    return spec


def build_exported_architecture(document: Mapping[str, Any], source: str) -> nn.Module:
    """The pruned architecture an exported ``policy.yaml`` describes (weights not loaded)."""
    spec = model_section(document, source)
    shape = tuple(int(v) for v in spec["input_shape"])
    model = build_model(spec["name"], dict(spec.get("args") or {}), shape, int(spec["num_classes"]),
                        where=f"{source}: ")
    channels = (document.get("reached") or {}).get("layer_channels") or {}
    output = spec.get("output_layer") or output_layer_name(model)
    return rebuild_architecture(model, channels, shape, output_layer=output, where=f"{source}: reached.layer_channels")


def load_pruned(folder: str | Path) -> nn.Module:
    """The exported pruned model of ``folder``, in eval mode on the CPU.

    Rebuilds the architecture from ``policy.yaml`` (model spec and per-layer channels) and
    loads ``weights.pt`` with ``weights_only=True``.

    Raises:
        AutopruneError: the folder lacks a file, or the weights do not fit the architecture.
    """
    from autoprune.dense import check_compatible, load_state_dict

    folder = Path(folder)
    policy_path = folder / POLICY_FILE
    document = read_document(policy_path)
    model = build_exported_architecture(document, str(policy_path))
    state = load_state_dict(folder / WEIGHTS_FILE, what="pruned weights")
    check_compatible(model, state, source=str(folder / WEIGHTS_FILE))
    model.load_state_dict(state)
    return model.eval()


def model_card(*, title: str, policy: Policy, document: Mapping[str, Any], metrics: Mapping[str, Any],
               notes: list[str]) -> str:
    """The text of ``MODEL_CARD.md``: what the model is, how good and fast, how to load it."""
    model = document.get("model", {})
    data = document.get("data", {})
    reached = document.get("reached", {})
    rows = [("validation accuracy", "accuracy", "{:.4f}"), ("test accuracy", "test_accuracy", "{:.4f}"),
            ("dense validation accuracy", "dense_accuracy", "{:.4f}"), ("accuracy drop", "accuracy_drop", "{:.4f}"),
            ("sparsity", "sparsity", "{:.4f}"), ("parameters", "params", "{:,.0f}"),
            ("non-zero parameters", "params_nonzero", "{:,.0f}"), ("MACs", "macs", "{:,.0f}"),
            ("size (bytes)", "size_bytes", "{:,.0f}"), ("latency (ms)", "latency_ms", "{:.4f}"),
            ("latency alone (ms)", "latency_ms_isolated", "{:.4f}"), ("speedup", "speedup", "{:.2f}×")]
    table = ["| metric | value |", "| --- | ---: |"]
    for label, key, fmt in rows:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and value == value:
            table.append(f"| {label} | {fmt.format(value)} |")
    architecture = ("channels removed; per-layer output channels: "
                    + ", ".join(f"{k} {v}" for k, v in (reached.get("layer_channels") or {}).items())
                    if policy.granularity == "channel" else "the dense architecture with zeroed weights (masks baked in)")
    lines = [
        f"# {title}", "",
        f"- **Model**: `{model.get('name')}` {model.get('args') or ''}, input {model.get('input_shape')}, "
        f"{model.get('num_classes')} classes; {architecture}.",
        f"- **Data**: `{data.get('name')}` (validation split: {data.get('val_fraction')} of the training data, "
        f"seed {data.get('seed')}).",
        f"- **Policy**: {policy.summary()} (seed {policy.seed}); full policy in `policy.yaml`.",
        "", "## Metrics", "", *table, "",
        "Accuracy is top-1. The test split was used once, for this card; the search saw only the "
        "validation split. Latency is the median forward time of one batch on the machine that exported "
        "the model, with the study's latency settings.",
        "", "## Use", "",
        "```python",
        "import autoprune",
        "model = autoprune.load_pruned(\"<this folder>\")      # torch, eval mode",
        "```", "",
        "```python",
        "import onnxruntime",
        "session = onnxruntime.InferenceSession(\"model.onnx\")",
        "logits = session.run([\"logits\"], {\"input\": batch})[0]    # batch: float32, any batch size",
        "```", "",
        "`weights.pt` is a plain state dict (`torch.load(..., weights_only=True)`).",
    ]
    if policy.granularity == "unstructured":
        lines += ["", "Unstructured sparsity does not make dense kernels faster: the model has the dense "
                      "model's shapes and latency; its zeros compress well and suit sparse runtimes."]
    if notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
