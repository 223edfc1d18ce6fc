"""Registering an exported model in the MLflow Model Registry.

``autoprune export`` (unless ``--no-register``) logs the export in the study's MLflow
experiment and registers its ONNX model under the study's name, so every export of a study
is one version of one registered model:

* an **export run** in the study's experiment (tags ``autoprune.role=export``,
  ``autoprune.trial=<N>``; nested under the study's parent run when there is one) holds
  the metrics and the folder's ``policy.yaml``, ``metrics.json``, ``MODEL_CARD.md`` and
  ``weights.pt``;
* the ONNX model is logged from that run (``mlflow.onnx.log_model``, with a signature) and
  registered as a new **model version** whose tags are ``study``, ``trial``, ``granularity``,
  ``policy`` (one-line summary) and every metric (``accuracy``, ``test_accuracy``,
  ``sparsity``, ``latency_ms``, ...); its description names the trial.

The store is the one the search tracks into (:func:`autoprune.tracking.resolve_tracking_uri`:
``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<studies>/mlflow.db`` with
artifacts under ``<studies>/mlartifacts/<study>/``); the registry uses the same URI.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from autoprune.artifacts import CARD_FILE, METRICS_FILE, ONNX_FILE, POLICY_FILE, WEIGHTS_FILE
from autoprune.errors import AutopruneError
from autoprune.policy import Policy


@dataclass
class Registered:
    """A registered model version."""

    name: str
    version: str
    run_id: str
    uri: str


def _experiment_id(client: Any, name: str, uri: str, root: Path) -> str:
    """The study's experiment, created (with the tracker's artifact location) when missing."""
    from autoprune.tracking import artifact_root

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    folder = artifact_root(uri, root)
    location = (folder / name).as_uri() if folder is not None else None
    return client.create_experiment(name, artifact_location=location, tags={"autoprune.study": name})


class _Fluent:
    """Point MLflow's fluent API at ``uri`` for a block, quietly, and restore it after."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> _Fluent:
        import mlflow

        # What was set explicitly (mlflow mirrors it into these variables), not the defaults
        # get_tracking_uri() would report: restoring a default would pin it for the process.
        self.previous = (os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
        self.levels = {name: logging.getLogger(name).level for name in ("mlflow", "alembic")}
        for name in self.levels:
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return self

    def __exit__(self, *exc: object) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.previous[0])
        mlflow.set_registry_uri(self.previous[1])
        if self.previous[1] is None:  # set_registry_uri(None) leaves the variable behind
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def _scalars(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield key, float(value)


def register_export(folder: str | Path, *, study: str, trial: int, policy: Policy, metrics: Mapping[str, Any],
                    root: Path, tracking_uri: str | None = None) -> Registered:
    """Log the export folder to MLflow and register its ONNX model as a version of ``study``.

    Raises:
        AutopruneError: the store cannot be reached or written (one line).
    """
    from autoprune.tracking import check_tracking_uri, client_for, find_parent_run, resolve_tracking_uri

    uri, source = resolve_tracking_uri(tracking_uri, root)
    check_tracking_uri(uri, source)
    folder = Path(folder)
    try:
        return _register(folder, study=study, trial=trial, policy=policy, metrics=metrics, root=root, uri=uri,
                         client=client_for(uri), find_parent_run=find_parent_run)
    except AutopruneError:
        raise
    except Exception as exc:  # any store failure: one line
        raise AutopruneError(f"MLflow store {uri}: registering the model failed: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0] + " (or use --no-register)") from None


def _register(folder: Path, *, study: str, trial: int, policy: Policy, metrics: Mapping[str, Any], root: Path,
              uri: str, client: Any, find_parent_run: Any) -> Registered:
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    experiment_id = _experiment_id(client, study, uri, root)
    parent = find_parent_run(client, experiment_id, study)
    tags = {"autoprune.study": study, "autoprune.role": "export", "autoprune.trial": str(trial),
            "policy": policy.summary()}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    onnx_path = folder / ONNX_FILE
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [2 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
    example = np.zeros(shape, dtype=np.float32)
    signature = infer_signature(example, session.run(["logits"], {"input": example})[0])
    scalars = dict(_scalars(metrics))
    with _Fluent(uri):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"export-trial-{trial}", tags=tags) as run:
            mlflow.log_metrics(scalars)
            for name in (POLICY_FILE, METRICS_FILE, CARD_FILE, WEIGHTS_FILE):
                mlflow.log_artifact(str(folder / name))
            with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
                info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="model", registered_model_name=study,
                                             signature=signature, save_as_external_data=False,
                                             await_registration_for=60)
    version = str(info.registered_model_version)
    version_tags = {"study": study, "trial": str(trial), "granularity": policy.granularity,
                    "policy": policy.summary(), **{k: f"{v:.6g}" for k, v in scalars.items()}}
    for key, value in version_tags.items():
        client.set_model_version_tag(study, version, key, value)
    client.update_model_version(study, version, description=f"autoprune export of trial {trial} of study {study}: "
                                                            f"{policy.summary()}")
    return Registered(name=study, version=version, run_id=run.info.run_id, uri=f"models:/{study}/{version}")
