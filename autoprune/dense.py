"""The dense model: trained once per study (or loaded), cached with what produced it.

Every trial prunes the same dense weights, so they are prepared once, in the driver:

* ``model.checkpoint`` given: the state dict is loaded with ``weights_only=True`` (a file
  that would run code when unpickled is refused) and checked against the architecture;
* otherwise the model is trained with ``model.pretrain`` and saved as
  ``studies/<study>/dense.pt``, next to ``dense.json`` holding a hash of everything that
  produced it (model spec, data spec and a fingerprint of the data, pretrain settings, seed).
  A later run whose hash matches reuses the weights; any change retrains.

Dense validation and test accuracy are reported; the test split is used for this one number
and for exported policies only, never to steer the search.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from autoprune.context import DenseReference, StudySetup
from autoprune.errors import AutopruneError
from autoprune.paths import StudyPaths
from autoprune.train import bundle_batches, evaluate, train

FORMAT_VERSION = 1


def dense_digest(setup: StudySetup) -> str:
    """The hash of everything that determines the dense weights (hex sha256)."""
    space = setup.space
    data = space.data
    recipe: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": space.model.model_dump(mode="json", exclude={"checkpoint"}),
        "data": {
            "name": data.name,
            "root": data.root,
            "args": data.args,
            "val_fraction": data.val_fraction,
            "train_subset": data.train_subset,
            "batch_size": data.batch_size,
            "fingerprint": setup.data.fingerprint(),
        },
        "seed": space.study.seed,
    }
    if space.model.checkpoint:
        where = f"{space.source}: model.checkpoint"
        recipe["checkpoint"] = _file_digest(Path(space.model.checkpoint).expanduser(), where=where)
        recipe["model"].pop("pretrain", None)
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: Path, *, where: str) -> str:
    if path.is_dir():
        raise AutopruneError(f"{where}: {path}: is a directory, expected a checkpoint file (torch.save of a state dict)")
    if not path.is_file():
        raise AutopruneError(f"{where}: {path}: no such checkpoint file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise AutopruneError(f"{where}: cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def load_state_dict(path: str | Path, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``); one-line errors for bad files.

    Accepts a bare state dict or a mapping with a ``state_dict`` key.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise AutopruneError(f"{path}: is a directory, expected a {what} file (torch.save of a state dict)")
    if not path.is_file():
        raise AutopruneError(f"{path}: no such {what}")
    save_hint = "save it with torch.save(model.state_dict())"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        blocked = next((line for line in lines if "unsupported global" in line.lower()), None)
        if blocked is None:  # not a pickle of Python objects at all: a corrupt or foreign file
            detail = next((line for line in lines if line.startswith("Unsupported")), "unreadable pickle")
            raise AutopruneError(f"{path}: cannot read {what}: not a file written by torch.save ({detail}); "
                                 f"{save_hint}") from None
        raise AutopruneError(
            f"{path}: refused to load {what}: it is not a plain weights file "
            f"({blocked.removeprefix('WeightsUnpickler error: ')}); "
            f"autoprune loads checkpoints with weights_only=True, {save_hint}"
        ) from None
    except Exception as error:  # torch raises many types for corrupt or truncated files
        detail = f"{type(error).__name__}: {error}".splitlines()[0]
        raise AutopruneError(f"{path}: cannot read {what}: not a complete file written by torch.save ({detail}); "
                             f"{save_hint}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise AutopruneError(f"{path}: {what} is not a state dict (a mapping of parameter names to tensors)")
    return loaded


def check_compatible(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`AutopruneError` if ``state`` does not fit ``model`` (names and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            key = wrong[0]
            parts.append(f"{key} has shape {tuple(state[key].shape)}, model expects {tuple(expected[key].shape)}")
        raise AutopruneError(f"{source}: does not match the model: {'; '.join(parts)}")


def check_checkpoint(setup: StudySetup) -> None:
    """Load and check ``model.checkpoint`` (if any) before anything is written; one-line errors."""
    space = setup.space
    if space.model.checkpoint:
        dense_digest(setup)  # a folder or a missing file, named with the space file
        state = load_state_dict(space.model.checkpoint, what="model.checkpoint")
        check_compatible(setup.model, state, source=f"{space.source}: model.checkpoint {space.model.checkpoint}")


def prepare_dense(
    setup: StudySetup,
    paths: StudyPaths,
    *,
    log: Callable[[str], None] = print,
) -> DenseReference:
    """Load or train the dense weights (cached in ``paths``) and measure their accuracy."""
    space = setup.space
    model = setup.model
    digest = dense_digest(setup)
    info = _read_info(paths.dense_info)
    if space.model.checkpoint:
        state = load_state_dict(space.model.checkpoint, what="model.checkpoint")
        check_compatible(model, state, source=f"{space.source}: model.checkpoint {space.model.checkpoint}")
        model.load_state_dict(state)
        log(f"dense model: loaded {space.model.checkpoint}")
    elif info.get("digest") == digest and (state := _cached_state(paths, model, log)) is not None:
        model.load_state_dict(state)
        log(f"dense model: reusing {paths.dense} (same model, data, pretrain and seed)")
        return _reference(model, info, digest)
    else:
        log(f"dense model: training {space.model.name} for {space.model.pretrain.epochs:g} epochs")
        _train_dense(setup)
        paths.create()
        _atomic_save(model.state_dict(), paths.dense)
    data = setup.data
    accuracy = evaluate(model, *data.split("val"))
    test_accuracy = evaluate(model, *data.split("test"))
    info = {"digest": digest, "accuracy": accuracy, "test_accuracy": test_accuracy, "model": space.model.name}
    if not space.model.checkpoint:
        _write_info(paths.dense_info, info)
    log(f"dense model: validation accuracy {accuracy:.4f}, test accuracy {test_accuracy:.4f}")
    return _reference(model, info, digest)


def _cached_state(paths: StudyPaths, model: torch.nn.Module, log: Callable[[str], None]) -> dict | None:
    """The cached dense weights, or ``None`` (with a note) when the file is missing or unusable."""
    if not paths.dense.is_file():
        return None
    try:
        state = load_state_dict(paths.dense, what="cached dense model")
        check_compatible(model, state, source=str(paths.dense))
    except AutopruneError as error:
        log(f"dense model: cache unusable, retraining ({error})")
        return None
    return state


def _train_dense(setup: StudySetup) -> None:
    space = setup.space
    pretrain = space.model.pretrain
    result = train(
        setup.model,
        bundle_batches(setup.data, space.data.batch_size, seed=space.study.seed),
        epochs=pretrain.epochs,
        lr=pretrain.lr,
        optimizer=pretrain.optimizer,
        seed=space.study.seed,
    )
    if result.diverged:
        raise AutopruneError(
            f"{space.source}: model.pretrain: dense training diverged ({result.reason}); lower model.pretrain.lr"
        )
    setup.model.eval()


def _reference(model: torch.nn.Module, info: dict[str, Any], digest: str) -> DenseReference:
    return DenseReference(
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        accuracy=float(info["accuracy"]),
        test_accuracy=info.get("test_accuracy"),
        digest=digest,
    )


def _read_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_info(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


def _atomic_save(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
