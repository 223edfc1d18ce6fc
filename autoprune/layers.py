"""Resolve a space's layer patterns against a real model's prunable layers.

``space.layers`` maps glob patterns (``fnmatch``: ``*``, ``?``, ``[...]``; ``*`` also matches
dots) to searched sparsity ranges; ``space.exclude`` lists names or patterns of layers that
are never pruned. Prunable layers are the model's conv and linear modules
(:func:`autoprune.models.prunable_layers`).

When several patterns match one layer, **the most specific wins**:

1. a pattern without wildcards (the exact layer name) beats any glob;
2. otherwise the pattern with more literal (non-wildcard) characters wins
   (``features.1*`` beats ``features.*``, which beats ``*``);
3. on a tie, the pattern written first in the file wins.

Under the ``per_layer`` allocation every layer matched by a pattern is one search dimension;
layers matched by no pattern follow the policy's ``target_sparsity`` (one shared dimension).
A pattern (in ``layers`` or ``exclude``) that matches no prunable layer is an error, since it
is almost always a typo, and so is excluding every layer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from autoprune.errors import AutopruneError
from autoprune.params import Param
from autoprune.space import PolicySpace, key_path

WILDCARDS = set("*?[]")


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer as the search sees it.

    Attributes:
        name: qualified module name (``features.0``).
        kind: the module class name (``Conv2d``, ``Linear``).
        shape: the weight's shape.
        params: the weight's number of elements.
        excluded: never pruned.
        pattern: the ``space.layers`` pattern that applies, or ``None``.
        sparsity: the searched range from that pattern, or ``None`` (follows target_sparsity).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    excluded: bool
    pattern: str | None
    sparsity: Param | None


def specificity(pattern: str) -> tuple[int, int]:
    """Sort key of a pattern: (no wildcards, number of literal characters); larger wins."""
    literal = sum(1 for ch in pattern if ch not in WILDCARDS)
    return (0 if WILDCARDS & set(pattern) else 1, literal)


def best_pattern(name: str, patterns: list[str]) -> str | None:
    """The most specific of ``patterns`` matching ``name`` (first written wins ties)."""
    matching = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
    if not matching:
        return None
    return max(matching, key=lambda p: (specificity(p), -patterns.index(p)))


def resolve_layers(space: PolicySpace, model: nn.Module, *, source: str = "space") -> list[LayerInfo]:
    """Apply ``space.layers`` and ``space.exclude`` to ``model``'s prunable layers.

    Returns one :class:`LayerInfo` per prunable layer in module order. Raises
    :class:`AutopruneError` naming the file and key when a pattern matches no layer or when
    every layer is excluded.
    """
    from autoprune.models import prunable_layers

    layers = prunable_layers(model)
    names = list(layers)
    listing = _listing(names)
    for pattern in space.layers:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            where = key_path(["space", "layers", pattern])
            raise AutopruneError(f"{source}: {where}: matches no prunable layer; prunable layers: {listing}")
    for index, pattern in enumerate(space.exclude):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise AutopruneError(
                f"{source}: space.exclude.{index} ({pattern!r}) matches no prunable layer; "
                f"prunable layers: {listing}"
            )
    patterns = list(space.layers)
    infos = []
    for name, module in layers.items():
        excluded = any(fnmatch.fnmatchcase(name, p) for p in space.exclude)
        pattern = None if excluded else best_pattern(name, patterns)
        infos.append(
            LayerInfo(
                name=name,
                kind=type(module).__name__,
                shape=tuple(module.weight.shape),
                params=module.weight.numel(),
                excluded=excluded,
                pattern=pattern,
                sparsity=space.layers[pattern].sparsity if pattern else None,
            )
        )
    if all(info.excluded for info in infos):
        raise AutopruneError(f"{source}: space.exclude: excludes every prunable layer ({listing}); nothing to prune")
    return infos


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
