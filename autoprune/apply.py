"""Applying a policy to a dense model: ``autoprune apply`` and :func:`apply_policy`.

A policy found by a study on one dense model can prune another one of the same architecture,
e.g. the fully trained production model: :func:`apply_policy` runs it end to end (scoring,
allocation, schedule, finetuning, measurement) exactly as a trial does
(:func:`autoprune.trial.run_trial`), on the model and data it is given.

``autoprune apply --policy policy.yaml [--checkpoint dense.pt] [--epochs N] --out DIR``
(:func:`apply_file`) reads an exported ``policy.yaml`` (:mod:`autoprune.artifacts`): the model
spec builds the dense architecture, the checkpoint (by default the one the policy was found
on) fills it, the data spec loads the same splits, the latency settings time the result;
``--epochs`` replaces the policy's finetuning epochs. It writes the same folder as
``autoprune export``. Applied to the study's own dense checkpoint with the policy's seed it
reproduces the trial (same sparsity; same accuracy up to floating-point noise), and says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoprune import __version__
from autoprune.artifacts import check_out_folder, file_sha256, model_card, write_artifacts
from autoprune.context import DenseReference, TrialContext
from autoprune.data import DataBundle, load_data
from autoprune.errors import AutopruneError
from autoprune.models import output_layer_name, prunable_layers
from autoprune.policy import Policy
from autoprune.space import LatencySpec
from autoprune.trial import TrialFailed, TrialResult, run_trial


def _layer_mismatch(policy: Policy, model: nn.Module, reached: Mapping[str, Any] | None) -> str | None:
    """Why ``policy`` (and the layers an exported policy reached) does not fit ``model``, or ``None``."""
    known = prunable_layers(model)
    named = [*policy.exclude, *policy.layer_sparsity, *(reached or {})]
    unknown = [name for name in named if name not in known]
    if unknown:
        return f"layer {unknown[0]!r} is not a prunable layer of the model; prunable layers: {', '.join(known)}"
    if reached:
        missing = [name for name in known if name not in reached]
        if missing:
            return f"the model's layer {missing[0]!r} is not in the policy; it was made for layers {', '.join(reached)}"
    return None


def apply_policy(model: nn.Module, policy: Policy | str | Path, data: DataBundle | None = None, *,
                 epochs: float | None = None, batch_size: int | None = None, calibration_batches: int | None = None,
                 latency: LatencySpec | Mapping[str, Any] | None = None, threads: int | None = 1,
                 device: str = "cpu") -> TrialResult:
    """Prune ``model`` (left untouched: a copy is pruned) with ``policy``; finetune and measure.

    Args:
        model: the dense model, with its trained weights.
        policy: a :class:`~autoprune.policy.Policy`, or a path to a policy file (a bare
            policy, or an exported ``policy.yaml`` whose data and latency settings then
            serve as defaults).
        data: the splits to finetune on (train), score with and measure on (validation);
            default: the exported policy's data spec.
        epochs: finetuning epochs instead of the policy's.
        batch_size, calibration_batches: training batch size and calibration batches for
            data-aware scorers (default: the exported policy's, else 128 and 4).
        latency: timing settings (:class:`~autoprune.space.LatencySpec` or its fields).
        threads: torch threads while pruning (1 is deterministic on the CPU).

    Returns:
        The :class:`~autoprune.trial.TrialResult`: metrics, per-layer sparsity and channels,
        and the pruned ``model``.

    Raises:
        AutopruneError: the policy's layers do not match the model, the policy is
            incomplete, or finetuning diverged.
    """
    document: dict[str, Any] = {}
    source = "policy"
    if isinstance(policy, (str, Path)):
        source = str(policy)
        document, policy = _read_policy(policy)
    settings = document.get("data") or {}
    if data is None:
        if not settings:
            raise AutopruneError(f"{source}: no data given and the policy has no 'data:' section")
        data = load_spec_data(settings, source)
    mismatch = _layer_mismatch(policy, model, (document.get("reached") or {}).get("layer_sparsity"))
    if mismatch:
        raise AutopruneError(f"{source}: its layers do not match the model: {mismatch}")
    if epochs is not None:
        if not 0 <= epochs <= 10_000:
            raise AutopruneError(f"--epochs {epochs:g}: must be between 0 and 10000")
        policy = policy.model_copy(update={"finetune": policy.finetune.model_copy(update={"epochs": float(epochs)})})
    if latency is None:
        latency = LatencySpec(**(document.get("latency") or {}))
    elif not isinstance(latency, LatencySpec):
        latency = LatencySpec(**latency)
    from autoprune.train import evaluate

    dense_model = copy.deepcopy(model).to(device).eval()
    state = {k: v.detach().clone() for k, v in dense_model.state_dict().items()}
    reference = DenseReference(state_dict=state, accuracy=evaluate(dense_model, *data.split("val")),
                               test_accuracy=None, digest="")
    context = TrialContext(
        model=dense_model, dense=reference, data=data, output_layer=output_layer_name(dense_model), latency=latency,
        batch_size=int(batch_size or settings.get("batch_size") or 128),
        calibration_batches=int(calibration_batches or settings.get("calibration_batches") or 4), device=device,
    )
    previous = torch.get_num_threads()
    try:
        return run_trial(policy, context, threads=threads)
    except TrialFailed as exc:
        raise AutopruneError(f"{source}: applying the policy failed: {exc}") from None
    finally:
        torch.set_num_threads(previous)


def _read_policy(path: str | Path) -> tuple[dict[str, Any], Policy]:
    """An exported policy document and its policy, or ``({}, policy)`` for a bare policy file."""
    from autoprune.policy import load_policy
    from autoprune.space import read_yaml

    raw = read_yaml(path, what="policy file")
    if isinstance(raw, dict) and isinstance(raw.get("policy"), dict):
        return raw, Policy.from_dict(raw["policy"], source=str(path))
    return {}, load_policy(path)


def load_spec_data(settings: Mapping[str, Any], source: str) -> DataBundle:
    """The splits an exported policy's ``data:`` section describes (same seed, same splits)."""
    return load_data(settings.get("name", ""), root=settings.get("root"), val_fraction=settings.get("val_fraction", 0.1),
                     seed=int(settings.get("seed", 0)), train_subset=settings.get("train_subset"),
                     args=dict(settings.get("args") or {}), where=f"{source}: ")


@dataclass
class ApplyOutcome:
    """What :func:`apply_file` did."""

    folder: Path
    metrics: dict[str, Any]
    same_checkpoint: bool
    onnx_max_abs_diff: float


def apply_file(policy_path: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
               epochs: float | None = None, log: Callable[[str], None] = print) -> ApplyOutcome:
    """``autoprune apply``: apply an exported ``policy.yaml`` to a dense checkpoint; write the folder.

    Raises:
        AutopruneError: not an exported policy, a checkpoint that is missing, not a state
            dict or not of the policy's model, a policy whose layers do not match the model.
    """
    from autoprune.dense import check_compatible, load_state_dict
    from autoprune.models import build_model
    from autoprune.train import evaluate

    source = str(policy_path)
    document, policy = _read_policy(policy_path)
    if not isinstance(document.get("model"), dict) or not isinstance(document.get("data"), dict):
        raise AutopruneError(f"{source}: a bare policy; apply needs an exported policy.yaml (with model: and data: "
                             "sections), or use autoprune trial --space SPACE --policy POLICY")
    folder = check_out_folder(out)
    if folder.resolve() == Path(policy_path).resolve().parent:
        raise AutopruneError(f"--out {out}: is the folder of --policy; write the result to another folder")
    recorded_dense = document.get("dense") or {}
    if checkpoint is None:
        checkpoint = recorded_dense.get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise AutopruneError(f"--checkpoint: not given, and the checkpoint the policy was found on "
                                 f"({checkpoint or 'not recorded'}) is not there; pass --checkpoint dense.pt")
    spec = document["model"]
    data = load_spec_data(document["data"], source)
    torch.manual_seed(int(document["data"].get("seed", 0)))
    model = build_model(spec.get("name", ""), dict(spec.get("args") or {}), tuple(data.input_shape), data.num_classes,
                        where=f"{source}: ")
    state = load_state_dict(checkpoint, what="checkpoint")
    check_compatible(model, state, source=f"--checkpoint {checkpoint}")
    model.load_state_dict(state)
    model.eval()
    digest = file_sha256(checkpoint)
    same = digest == recorded_dense.get("sha256")
    log(f"apply: {policy.summary()} on {checkpoint}" + (" (the checkpoint the policy was found on)" if same else ""))
    result = apply_policy(model, source, data, epochs=epochs)
    test_x, test_y = data.split("test")
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items() if k != "trial_seconds"}
    metrics["test_accuracy"] = evaluate(result.model, test_x, test_y)
    metrics["dense_test_accuracy"] = evaluate(model, test_x, test_y)
    notes = []
    recorded = document.get("metrics") or {}
    if same and epochs is None and isinstance(recorded.get("accuracy"), (int, float)):
        difference = metrics["accuracy"] - float(recorded["accuracy"])
        matches = math.isclose(metrics["sparsity"], float(recorded.get("sparsity", math.nan)), abs_tol=1e-9)
        metrics["reproduction"] = {"policy_accuracy": float(recorded["accuracy"]), "accuracy_difference": difference,
                                   "sparsity_matches": matches}
        log(f"apply: reproduces the policy's model: sparsity {'equal' if matches else 'DIFFERENT'}, validation "
            f"accuracy {metrics['accuracy']:.4f} vs {float(recorded['accuracy']):.4f} ({difference:+.4f})")
        notes.append(f"Applied to the checkpoint the policy was found on: validation accuracy differs by "
                     f"{difference:+.4f} from the policy's.")
    reached = {"sparsity": float(result.metrics["sparsity"]),
               "layer_sparsity": {k: round(float(v), 6) for k, v in result.layer_sparsity.items()},
               "layer_channels": {k: int(v) for k, v in result.layer_channels.items()}}
    sections = {
        "reached": reached,
        "model": {**spec, "output_layer": output_layer_name(model)},
        "data": document["data"],
        "latency": document.get("latency") or LatencySpec().model_dump(mode="json"),
        "dense": {"checkpoint": str(Path(checkpoint).resolve()), "sha256": digest, "digest": "",
                  "accuracy": float(result.metrics["dense_accuracy"]), "test_accuracy": metrics["dense_test_accuracy"]},
        "source": {"applied_policy": str(Path(policy_path).resolve()), "policy_source": document.get("source", {}),
                   "epochs": policy.finetune.epochs if epochs is None else float(epochs),
                   "autoprune_version": __version__,
                   "applied": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    card = model_card(title=f"pruned {spec.get('name')} (policy applied to {Path(checkpoint).name})", policy=policy,
                      document=sections, metrics=metrics, notes=notes)
    written = write_artifacts(folder, model=result.model, policy=policy, document=sections, metrics=metrics,
                              check_inputs=data.split("val")[0], card=card)
    log(f"apply: sparsity {metrics['sparsity']:.4f}, validation accuracy {metrics['accuracy']:.4f}, test accuracy "
        f"{metrics['test_accuracy']:.4f}; ONNX max abs difference {written.onnx_max_abs_diff:.2g}; wrote {folder}")
    return ApplyOutcome(folder=folder, metrics=metrics, same_checkpoint=same, onnx_max_abs_diff=written.onnx_max_abs_diff)
