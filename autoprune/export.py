"""``autoprune export``: one trial of a study as a pruned model that production can use.

The trial is chosen by number, by a pick expression or by the default rule
(:mod:`autoprune.pick`). Its pruned weights are not stored by the search, so they are
**reproduced**: the trial's policy runs again (:func:`autoprune.trial.run_trial`) on the
study's cached dense model and data, with the policy's seed, on the device the trial ran on
(when it is here). On the CPU with one thread that is deterministic; the export checks that the reached sparsity (and, for channel
pruning, every layer's channel count) equals what the study recorded, and reports the
difference in validation accuracy. Then, for the first and only time, the test split is
used: ``test_accuracy``.

The folder written is described in :mod:`autoprune.artifacts` (``policy.yaml``,
``weights.pt``, ``model.onnx`` checked with onnxruntime, ``metrics.json``,
``MODEL_CARD.md``). Unless ``register=False`` the model is registered in the MLflow Model
Registry under the study's name (:mod:`autoprune.registration`). The default folder is
``studies/<study>/export/trial-<N>/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from autoprune import __version__
from autoprune.artifacts import check_out_folder, file_sha256, model_card, write_artifacts
from autoprune.context import DenseReference, StudySetup, TrialContext, build_setup, trial_context
from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths
from autoprune.pick import choose_trial
from autoprune.policy import Policy
from autoprune.registration import Registered, register_export
from autoprune.train import evaluate
from autoprune.trial import TrialFailed, TrialResult, run_trial

#: metrics of the trial that describe the architecture, so they hold for the exported model too
ARCHITECTURE_METRICS = ("latency_ms_isolated", "speedup_isolated", "dense_latency_ms_isolated")


@dataclass
class ExportOutcome:
    """What :func:`export_study` did."""

    folder: Path
    trial: int
    reason: str
    metrics: dict[str, Any]
    accuracy_difference: float
    onnx_max_abs_diff: float
    registered: Registered | None


def export_study(study: str, *, out: str | Path | None = None, trial: int | None = None, pick: str | None = None,
                 studies: str | Path | None = None, register: bool = True, tracking_uri: str | None = None,
                 log: Callable[[str], None] = print) -> ExportOutcome:
    """Export one trial of ``study`` (see the module docstring).

    Raises:
        AutopruneError: unknown study or trial, a failed or infeasible trial, a pick that
            matches nothing, a dense model that is not the one the study used, a
            reproduction whose sparsity differs, an ONNX model that disagrees with torch.
    """
    from autoprune.report import open_existing
    from autoprune.results import trials_frame

    paths, space, handle = open_existing(study, studies)
    if out is not None:
        check_out_folder(out)
    if register:  # a store that cannot be used is refused before anything is written
        from autoprune.tracking import check_tracking_uri, resolve_tracking_uri

        check_tracking_uri(*resolve_tracking_uri(tracking_uri, paths.root))
    trials = {t.number: t for t in handle.get_trials(deepcopy=False)}
    choice = choose_trial(trials_frame(list(trials.values()), space.objectives), trial=trial, pick=pick)
    chosen = trials[choice.number]
    log(f"export: {choice.reason}")
    policy = Policy.from_dict(chosen.user_attrs["policy"], source=f"trial {choice.number}'s policy")
    recorded = dict(chosen.user_attrs.get("metrics", {}))
    setup = build_setup(space)
    dense = study_dense(setup, paths)
    ran_on_gpu = str(chosen.user_attrs.get("device", "cpu")).startswith("cuda")
    context = trial_context(setup, dense, device="cuda" if ran_on_gpu and torch.cuda.is_available() else "cpu")
    log(f"export: re-running trial {choice.number}'s policy on the study's dense model: {policy.summary()}")
    result = reproduce(policy, context, recorded, chosen.user_attrs.get("layer_channels"), number=choice.number)
    difference = result.metrics["accuracy"] - float(recorded["accuracy"])
    log(f"export: sparsity {result.metrics['sparsity']:.4f} as recorded; validation accuracy "
        f"{result.metrics['accuracy']:.4f} (study: {float(recorded['accuracy']):.4f}, difference {difference:+.4f})")
    test_x, test_y = setup.data.split("test")
    test_accuracy = evaluate(result.model, test_x, test_y)
    metrics = exported_metrics(result, recorded, test_accuracy=test_accuracy, dense=dense)
    metrics["reproduction"] = {"trial_accuracy": float(recorded["accuracy"]), "accuracy_difference": difference,
                               "sparsity_matches": True}
    source = {"study": space.study.name, "trial": choice.number, "chosen_by": choice.reason,
              "autoprune_version": __version__,
              "exported": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    document = study_document(setup, paths, dense, result, source)
    folder = Path(out) if out is not None else paths.export / f"trial-{choice.number}"
    card = model_card(title=f"{space.study.name}, trial {choice.number}: pruned {space.model.name}", policy=policy,
                      document=document, metrics=metrics,
                      notes=[f"Chosen by: {choice.reason}.",
                             f"Reproduced from the study: validation accuracy differs by {difference:+.4f} "
                             "from the trial's (same dense weights, data and seed)."])
    written = write_artifacts(folder, model=result.model, policy=policy, document=document, metrics=metrics,
                              check_inputs=setup.data.split("val")[0], card=card)
    log(f"export: test accuracy {test_accuracy:.4f}; ONNX max abs difference {written.onnx_max_abs_diff:.2g}; "
        f"wrote {folder}")
    registered = None
    if register:
        registered = register_export(folder, study=space.study.name, trial=choice.number, policy=policy,
                                     metrics=metrics, root=paths.root, tracking_uri=tracking_uri)
        log(f"export: registered model {registered.name!r} version {registered.version} ({registered.uri})")
    return ExportOutcome(folder=folder, trial=choice.number, reason=choice.reason, metrics=metrics,
                         accuracy_difference=difference, onnx_max_abs_diff=written.onnx_max_abs_diff,
                         registered=registered)


def study_dense(setup: StudySetup, paths: StudyPaths) -> DenseReference:
    """The study's dense weights, refusing to train new ones (they would not be the study's)."""
    from autoprune.dense import dense_digest, prepare_dense

    if not setup.space.model.checkpoint:
        try:
            info = json.loads(paths.dense_info.read_text())
        except (OSError, ValueError):
            info = {}
        if not paths.dense.is_file() or info.get("digest") != dense_digest(setup):
            raise AutopruneError(
                f"{paths.dense}: the study's cached dense model is missing or was made by another recipe; "
                "export re-runs the trial on the very dense weights the study used (run autoprune search again "
                "to rebuild the cache, then export)"
            )
    return prepare_dense(setup, paths, log=lambda _: None)


def reproduce(policy: Policy, context: TrialContext, recorded: Mapping[str, Any],
              layer_channels: Mapping[str, int] | None, *, number: int) -> TrialResult:
    """Run ``policy`` again with one thread and check that it reaches what the study recorded."""
    previous = torch.get_num_threads()
    try:
        result = run_trial(policy, context, threads=1)
    except TrialFailed as exc:
        raise AutopruneError(f"trial {number}: re-running its policy failed: {exc}") from None
    finally:
        torch.set_num_threads(previous)
    wanted = float(recorded["sparsity"])
    if not math.isclose(result.metrics["sparsity"], wanted, rel_tol=0, abs_tol=1e-9):
        raise AutopruneError(
            f"trial {number}: re-running its policy reached sparsity {result.metrics['sparsity']:.6f}, the study "
            f"recorded {wanted:.6f}; the dense model, data or autoprune changed since the study ran"
        )
    if layer_channels:
        wrong = [n for n, c in layer_channels.items() if result.layer_channels.get(n) != int(c)]
        if wrong:
            raise AutopruneError(
                f"trial {number}: re-running its policy left layer {wrong[0]!r} with "
                f"{result.layer_channels.get(wrong[0])} channels, the study recorded {layer_channels[wrong[0]]}"
            )
    return result


def exported_metrics(result: TrialResult, recorded: Mapping[str, Any], *, test_accuracy: float,
                     dense: DenseReference) -> dict[str, Any]:
    """The metrics of an exported model: measured now, plus the trial's isolated latencies."""
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items() if k != "trial_seconds"}
    metrics["test_accuracy"] = float(test_accuracy)
    if dense.test_accuracy is not None:
        metrics["dense_test_accuracy"] = float(dense.test_accuracy)
    for name in ARCHITECTURE_METRICS:
        if isinstance(recorded.get(name), (int, float)):
            metrics[name] = float(recorded[name])
    return metrics


def reached_section(result: TrialResult) -> dict[str, Any]:
    """``reached:``: the overall and per-layer sparsity and the per-layer output channels."""
    return {"sparsity": float(result.metrics["sparsity"]),
            "layer_sparsity": {k: round(float(v), 6) for k, v in result.layer_sparsity.items()},
            "layer_channels": {k: int(v) for k, v in result.layer_channels.items()}}


def study_document(setup: StudySetup, paths: StudyPaths, dense: DenseReference, result: TrialResult,
                   source: dict[str, Any]) -> dict[str, Any]:
    """The sections of ``policy.yaml`` besides ``policy`` and ``metrics`` for a study's trial."""
    space = setup.space
    checkpoint = Path(space.model.checkpoint).expanduser().resolve() if space.model.checkpoint else paths.dense
    return {
        "reached": reached_section(result),
        "model": {"name": space.model.name, "args": dict(space.model.args),
                  "input_shape": [int(v) for v in setup.data.input_shape], "num_classes": int(setup.data.num_classes),
                  "output_layer": setup.output_layer,
                  "pretrain": space.model.pretrain.model_dump(mode="json")},
        "data": {"name": space.data.name, "root": space.data.root, "args": dict(space.data.args),
                 "val_fraction": space.data.val_fraction, "train_subset": space.data.train_subset,
                 "seed": space.study.seed, "batch_size": space.data.batch_size,
                 "calibration_batches": space.data.calibration_batches},
        "latency": space.latency.model_dump(mode="json"),
        "dense": {"checkpoint": str(checkpoint), "sha256": file_sha256(checkpoint), "digest": dense.digest,
                  "accuracy": float(dense.accuracy),
                  "test_accuracy": None if dense.test_accuracy is None else float(dense.test_accuracy)},
        "source": source,
    }
