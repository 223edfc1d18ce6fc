"""ONNX: export a torch model, open it in onnxruntime, compare the two.

Used by :mod:`autoprune.artifacts` (the exported ``model.onnx``, checked against torch) and
by :mod:`autoprune.measure` when ``latency.runtime`` is ``onnxruntime`` (the model is timed
as that exported file runs). onnxruntime runs on the CPU (``CPUExecutionProvider``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU with ``threads`` intra-op threads.

    Inter-op parallelism is off (one thread, sequential execution) and every graph
    optimisation is on, as a latency-minded deployment runs it; warnings are silenced.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``model`` (eval mode, CPU) as ONNX with a dynamic batch dimension, quietly.

    Uses the ``torch.export``-based exporter (``dynamo=True``); ``example`` is a batch of at
    least two inputs (a batch of one would fix the batch size).
    """
    model = copy.deepcopy(model).cpu().eval()
    if len(example) < 2:
        example = torch.cat([example, example])
    chatter = io.StringIO()
    quiet = ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")
    levels = {name: logging.getLogger(name).level for name in quiet}
    try:
        for name in quiet:
            logging.getLogger(name).setLevel(logging.ERROR)
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example.cpu(),), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user gets one line
        raise AutopruneError(f"{path}: ONNX export failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def onnx_max_abs_diff(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and torch's logits on ``inputs``."""
    session = onnx_session(path)
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        expected = model(inputs.cpu()).numpy()
    actual = session.run(["logits"], {"input": inputs.cpu().numpy()})[0]
    if actual.shape != expected.shape:
        raise AutopruneError(f"{path}: onnxruntime returned logits of shape {actual.shape}, torch {expected.shape}")
    return float(abs(actual - expected).max())
