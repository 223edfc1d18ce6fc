from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune import artifacts
from autoprune.errors import AutopruneError
from autoprune.models import build_model
from autoprune.policy import Policy


def write(folder: Path) -> artifacts.Written:
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [16]}, (64,), 10)
    return artifacts.write_artifacts(folder, model=model, policy=Policy(), document={}, metrics={"accuracy": 0.5},
                                     check_inputs=torch.randn(8, 64), card="card")


def test_a_checked_export_writes_every_file(tmp_path: Path) -> None:
    written = write(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written.files)
    assert written.onnx_max_abs_diff <= artifacts.ONNX_TOLERANCE


def test_an_onnx_model_that_disagrees_with_torch_leaves_nothing_behind(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "onnx_max_abs_diff", lambda *args: 1.0)
    with pytest.raises(AutopruneError, match="disagree.*nothing was written"):
        write(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / artifacts.ONNX_FILE).write_text("an earlier export")
    with pytest.raises(AutopruneError, match="disagree"):
        write(earlier)
    assert [p.name for p in earlier.iterdir()] == [artifacts.ONNX_FILE]
    assert (earlier / artifacts.ONNX_FILE).read_text() == "an earlier export"
