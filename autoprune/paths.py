"""Where a study lives on disk.

Every study has one folder, ``<root>/<study>/`` (``root`` defaults to ``./studies``)::

    space.yaml      the exact space that ran
    dense.pt        cached dense weights; dense.json says what produced them (hash) and
                    their accuracy
    optuna.db       Optuna RDB storage (optuna-dashboard can open it)
    tune/           Ray Tune experiment state, for resume
    trials.csv  pareto.csv  pareto.html  pareto.png
    baselines.csv   the no-search references (``autoprune baselines``)
    search.log      Ray's and autoprune's log of the search
    .lock           held by the driver running the study (PID inside)
    export/         exported policies and models

The default MLflow store is shared by all studies under the same root:
``<root>/mlflow.db`` and ``<root>/mlartifacts/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import AutopruneError

DEFAULT_ROOT = "studies"


def studies_root(root: str | Path | None = None) -> Path:
    """The studies folder: ``root``, else ``$AUTOPRUNE_STUDIES``, else ``./studies``.

    Raises:
        AutopruneError: the path exists and is not a folder (the message names where it came from).
    """
    if root:
        where = f"--studies {root}"
    elif os.environ.get("AUTOPRUNE_STUDIES"):
        where = f"AUTOPRUNE_STUDIES={os.environ['AUTOPRUNE_STUDIES']}"
    else:
        where = f"studies folder ./{DEFAULT_ROOT}"
    path = Path(root or os.environ.get("AUTOPRUNE_STUDIES") or DEFAULT_ROOT).resolve()
    if path.exists() and not path.is_dir():
        raise AutopruneError(f"{where}: exists and is not a folder; the studies folder holds one folder per study")
    return path


@dataclass(frozen=True)
class StudyPaths:
    """The files of one study (nothing is created until :meth:`create`)."""

    root: Path
    name: str

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def space(self) -> Path:
        return self.folder / "space.yaml"

    @property
    def dense(self) -> Path:
        return self.folder / "dense.pt"

    @property
    def dense_info(self) -> Path:
        return self.folder / "dense.json"

    @property
    def optuna_db(self) -> Path:
        return self.folder / "optuna.db"

    @property
    def tune(self) -> Path:
        return self.folder / "tune"

    @property
    def trials_csv(self) -> Path:
        return self.folder / "trials.csv"

    @property
    def pareto_csv(self) -> Path:
        return self.folder / "pareto.csv"

    @property
    def baselines_csv(self) -> Path:
        return self.folder / "baselines.csv"

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"

    @property
    def log(self) -> Path:
        return self.folder / "search.log"

    @property
    def export(self) -> Path:
        return self.folder / "export"

    def create(self) -> StudyPaths:
        """Make the study folder (and the studies folder); one-line errors when that is impossible."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AutopruneError(f"{self.folder}: cannot create the study folder ({error.strerror or error}); "
                                 "--studies must be a folder autoprune can write") from None
        return self


def study_paths(name: str, root: str | Path | None = None) -> StudyPaths:
    return StudyPaths(studies_root(root), name)
