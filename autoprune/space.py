"""The search-space file: parse, validate and type it.

A space file (YAML) says what one study searches: the study itself (name, trial budget,
sampler, seed), the objectives that make up the Pareto front, constraints, the model and
data, how latency is timed, and the space of pruning policies (granularity, scorer,
allocation, per-layer sparsity ranges, schedule, finetuning). See ``README.md`` for the full
format and ``search_spaces/`` for examples.

:func:`load_space` turns a file into a validated :class:`SearchSpace`. Every problem is an
:class:`~autoprune.errors.AutopruneError` whose one-line message names the file, the key path
(e.g. ``space.layers."features.*".sparsity``) and what is allowed. YAML is loaded safely
(tags that would construct Python objects are refused) and duplicate keys are refused.

Values that can be searched are :class:`~autoprune.params.Param` (a scalar is fixed, a list
of names is a choice, ``[low, high]`` or ``{low, high, log}`` is a range).

Resolving layer patterns against a real model is :mod:`autoprune.layers`' job.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from autoprune.errors import AutopruneError
from autoprune.params import Param, ValueType, fixed, parse_param, span

GRANULARITIES = ("unstructured", "channel")
METRIC_NAMES = (
    "accuracy",
    "accuracy_drop",
    "sparsity",
    "latency_ms",
    "params",
    "params_nonzero",
    "macs",
    "size_bytes",
    "speedup",
)
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _names(kind: str) -> list[str]:
    """Valid names of one registry, imported lazily so this module stays light."""
    if kind == "scorer":
        from autoprune.scorers import SCORERS

        return SCORERS.names()
    if kind == "allocation":
        from autoprune.allocation import ALLOCATIONS

        return ALLOCATIONS.names()
    if kind == "schedule":
        from autoprune.schedules import SCHEDULES

        return SCHEDULES.names()
    if kind == "sampler":
        from autoprune.samplers import SAMPLERS

        return SAMPLERS.names()
    if kind == "granularity":
        return list(GRANULARITIES)
    if kind == "optimizer":
        from autoprune.train import OPTIMIZERS

        return OPTIMIZERS.names()
    raise KeyError(kind)


def _param(
    value_type: ValueType,
    *,
    names: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    maximum_inclusive: bool = True,
) -> Callable[[Any], Param]:
    def parse(raw: Any) -> Param:
        return parse_param(
            raw,
            value_type,
            names=_names(names) if names else None,
            minimum=minimum,
            maximum=maximum,
            maximum_inclusive=maximum_inclusive,
        )

    return parse


SparsityParam = Annotated[Param, BeforeValidator(_param("float", minimum=0.0, maximum=1.0, maximum_inclusive=False))]
PositiveFloatParam = Annotated[Param, BeforeValidator(_param("float", minimum=0.0))]
FractionParam = Annotated[Param, BeforeValidator(_param("float", minimum=0.0, maximum=1.0))]
BoolParam = Annotated[Param, BeforeValidator(_param("bool"))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class StudySpec(_Section):
    """``study:`` who the study is and how much it may spend."""

    name: str = "study"
    trials: int = Field(32, ge=1, le=100_000)
    sampler: str = "tpe"
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not STUDY_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid study name; use letters, digits, '.', '_' and '-' "
                "(it becomes a folder under studies/)"
            )
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return _known("sampler", value)


class PretrainSpec(_Section):
    """``model.pretrain:`` how the dense model is trained when no checkpoint is given."""

    epochs: float = Field(3.0, gt=0, le=10_000)
    lr: float = Field(0.05, gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"


class ModelSpec(_Section):
    """``model:`` which network to prune."""

    name: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)


class DataSpec(_Section):
    """``data:`` which dataset, how it is split and batched."""

    name: str = "digits"
    root: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    train_subset: int | None = Field(None, ge=1)
    batch_size: int = Field(128, ge=1, le=65_536)
    calibration_batches: int = Field(4, ge=1, le=10_000)


class LatencySpec(_Section):
    """``latency:`` how forward latency is timed (see :mod:`autoprune.measure`)."""

    batch_size: int = Field(1, ge=1, le=65_536)
    threads: int = Field(1, ge=1, le=1024)
    repeats: int = Field(100, ge=1, le=100_000)
    warmup: int = Field(10, ge=0, le=100_000)
    runtime: Literal["torch", "onnxruntime"] = "torch"


class ConstraintsSpec(_Section):
    """``constraints:`` trials that break one are infeasible: kept, marked, never "best"."""

    accuracy_drop: float | None = Field(None, ge=0, le=1)


class LayerRange(_Section):
    """One entry of ``space.layers``: the searched sparsity of the layers a pattern matches."""

    sparsity: SparsityParam


class ScheduleSpace(_Section):
    """``space.schedule:`` the shape of the sparsity curve and the number of prune steps."""

    shape: Annotated[Param, BeforeValidator(_param("name", names="schedule"))] = fixed("one_shot", "name")
    steps: Annotated[Param, BeforeValidator(_param("int", minimum=1, maximum=1000))] = fixed(1, "int")
    tolerance: FractionParam = fixed(0.01, "float")


class FinetuneSpace(_Section):
    """``space.finetune:`` how much and how finetuning recovers accuracy."""

    epochs: Annotated[Param, BeforeValidator(_param("float", minimum=0.0, maximum=10_000))] = fixed(1.0, "float")
    lr: Annotated[Param, BeforeValidator(_param("float", minimum=1e-9, maximum=10.0))] = span(1e-3, 0.1, log=True)
    optimizer: Annotated[Param, BeforeValidator(_param("name", names="optimizer"))] = fixed("sgd", "name")
    distill: BoolParam = fixed(False, "bool")
    temperature: Annotated[Param, BeforeValidator(_param("float", minimum=0.1, maximum=100))] = fixed(4.0, "float")
    distill_weight: FractionParam = fixed(0.5, "float")


def _default_scorer_params() -> dict[str, dict[str, Param]]:
    return {"gradient_magnitude": {"lam": span(1e-2, 1e2, log=True)}}


class PolicySpace(_Section):
    """``space:`` the pruning policies the study chooses from."""

    granularity: Annotated[Param, BeforeValidator(_param("name", names="granularity"))] = fixed("unstructured", "name")
    scorer: Annotated[Param, BeforeValidator(_param("name", names="scorer"))] = fixed("magnitude", "name")
    scorer_params: dict[str, dict[str, Annotated[Param, BeforeValidator(_param("float"))]]] = Field(
        default_factory=_default_scorer_params
    )
    allocation: Annotated[Param, BeforeValidator(_param("name", names="allocation"))] = fixed("uniform", "name")
    target_sparsity: SparsityParam = span(0.5, 0.95)
    layers: dict[str, LayerRange] = Field(default_factory=dict)
    exclude: list[str] = Field(default_factory=list)
    min_layer_density: float = Field(0.01, gt=0, le=1)
    round_to: Annotated[Param, BeforeValidator(_param("int", minimum=1, maximum=4096))] = fixed(1, "int")
    schedule: ScheduleSpace = Field(default_factory=ScheduleSpace)
    finetune: FinetuneSpace = Field(default_factory=FinetuneSpace)

    @field_validator("scorer_params")
    @classmethod
    def _known_scorers(cls, value: dict[str, dict[str, Param]]) -> dict[str, dict[str, Param]]:
        for name in value:
            _known("scorer", name)
        merged = _default_scorer_params()
        for name, params in value.items():
            merged.setdefault(name, {}).update(params)
        return merged


class SearchSpace(_Section):
    """A whole validated space file. ``source`` is the file it came from (for messages)."""

    study: StudySpec = Field(default_factory=StudySpec)
    objectives: dict[str, Literal["max", "min"]] = Field(
        default_factory=lambda: {"accuracy": "max", "sparsity": "max"}
    )
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    space: PolicySpace = Field(default_factory=PolicySpace)
    source: str = Field("<memory>", exclude=True)

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError(f"at least one objective is needed; metrics: {', '.join(METRIC_NAMES)}")
        for name in value:
            if name not in METRIC_NAMES:
                raise ValueError(_unknown_message("metric", name, METRIC_NAMES))
        return value

    def to_yaml_dict(self) -> dict[str, Any]:
        """The space as a plain mapping that :func:`parse_space` reads back to an equal space."""
        return _plain(self.model_dump(exclude={"source"}))


def _plain(value: Any) -> Any:
    if isinstance(value, Param):
        return value.to_yaml()
    if isinstance(value, dict):
        if set(value) >= {"kind", "value_type"} and "choices" in value:
            return Param(**value).to_yaml()
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _known(kind: str, value: str) -> str:
    names = _names(kind)
    if value not in names:
        raise ValueError(_unknown_message(kind, value, names))
    return value


def _unknown_message(kind: str, value: object, names: typing.Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {value!r}{hint}; allowed: {', '.join(names)}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path, *, what: str = "file") -> Any:
    """Load a YAML file safely; every problem is a one-line :class:`AutopruneError`.

    Refuses tags that construct Python objects (``!!python/object`` ...) and duplicate keys.
    """
    path = Path(path)
    if not path.exists():
        raise AutopruneError(f"{path}: no such {what}")
    if path.is_dir():
        raise AutopruneError(f"{path}: is a directory, expected a YAML {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise AutopruneError(f"{path}: cannot read: not UTF-8 text (byte {error.start}: {error.reason}); "
                             f"a {what} is a UTF-8 YAML file") from None
    except OSError as error:
        raise AutopruneError(f"{path}: cannot read: {error}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as error:
        line = f" line {error.problem_mark.line + 1}:" if error.problem_mark else ""
        problem = str(error.problem)
        if "could not determine a constructor" in problem:
            tag = problem.split("tag ", 1)[-1]
            problem = f"refused YAML tag {tag} (autoprune loads YAML safely; remove the tag)"
        raise AutopruneError(f"{path}:{line} {problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark and (not mark or context_mark.line != mark.line):
            problem += f" ({context} at line {context_mark.line + 1})"
        raise AutopruneError(f"{path}: YAML syntax error:{line} {problem}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file. Raises :class:`AutopruneError` on any problem.

    A file with no YAML document (empty, or only comments) is refused: it is far more likely a
    mistake than a wish for the all-default study; ``{}`` asks for that explicitly.
    """
    raw = read_yaml(path, what="space file")
    if raw is None:
        raise AutopruneError(f"{path}: empty space file; write {{}} to take every default, or see search_spaces/")
    return parse_space(raw, source=str(path))


def parse_space(raw: Any, *, source: str = "<memory>") -> SearchSpace:
    """Validate an already-loaded mapping as a space (``source`` names it in errors)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AutopruneError(f"{source}: a space file is a mapping of sections, got {type(raw).__name__}")
    try:
        return SearchSpace.model_validate({**raw, "source": source})
    except ValidationError as error:
        raise AutopruneError(f"{source}: {describe_validation_error(error)}") from None


def describe_validation_error(error: ValidationError, model: type[BaseModel] = SearchSpace) -> str:
    """The first pydantic error as ``key.path: what is wrong; what is allowed``."""
    first = error.errors()[0]
    loc = [part for part in first["loc"] if not str(part).startswith("function-")]
    loc = [part for part in loc if part not in ("function-before[parse(), Param]",)]
    path = key_path(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        message = f"{message}, got {first.get('input')!r}"
    elif kind in ("dict_type", "model_type"):
        message = f"expected a mapping, got {first.get('input')!r}"
    return f"{path}: {message}"


def key_path(loc: typing.Sequence[Any]) -> str:
    """``('space', 'layers', 'features.*', 'sparsity')`` → ``space.layers."features.*".sparsity``."""
    parts = []
    for part in loc:
        text = str(part)
        parts.append(text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|\d+", text) else f'"{text}"')
    return ".".join(parts) or "(top level)"


def _allowed_keys(model: type[BaseModel], loc: typing.Sequence[Any]) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (walking nested models and dicts)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [name for name, f in annotation.model_fields.items() if not f.exclude]
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``Optional``/``Annotated`` wrappers from a type annotation."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = options[0]
        else:
            return annotation
