"""Vision-tower outputs kept per clip while the tower is frozen.

A frozen tower is a fixed function of its clip, so over many epochs it computes the same
features again and again: in the demo's runs (a 718k-parameter model, 8-frame clips) the
tower was 4-14% of every training step. The cache keeps each clip's rows of the tower's
output (features and any row-aligned extras, e.g. Qwen3-VL's DeepStack levels) under the
clip's ``VideoInputs.key``, on the CPU, up to a byte bound.

The tower computes each clip independently of the others in its batch, so a batch assembled
from cached rows equals the batch computed whole: bit for bit when its clips share one shape
(the demo; the tests check it), to ~3e-8 otherwise (the padded attention over clips of
different lengths rounds differently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# (features (n, D), extras) of one clip; extras values are row-aligned tensors or lists of them
Rows = tuple[torch.Tensor, dict[str, Any]]


def _slice(x: Any, a: int, b: int) -> Any:
    """Rows [a, b) of a tensor, or of every tensor in a list / dict of them (cloned: a view
    would keep the whole batch's output alive)."""
    if isinstance(x, torch.Tensor):
        return x[a:b].detach().to("cpu", copy=True)
    if isinstance(x, list):
        return [_slice(e, a, b) for e in x]
    if isinstance(x, dict):
        return {k: _slice(v, a, b) for k, v in x.items()}
    raise TypeError(f"cannot split a {type(x).__name__} of vision-tower output by rows")


def _cat(xs: list[Any], device: torch.device) -> Any:
    """Inverse of ``_slice`` over clips: concatenate the rows of the same leaves."""
    first = xs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(xs).to(device)
    if isinstance(first, list):
        return [_cat([x[i] for x in xs], device) for i in range(len(first))]
    return {k: _cat([x[k] for x in xs], device) for k in first}


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    items = x.values() if isinstance(x, dict) else x
    return sum(_nbytes(e) for e in items)


class TowerCache:
    """Clip key -> that clip's tower output rows, up to ``max_bytes`` (then no more entries:
    under random sampling the first clips kept are hit as often as any others)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.rows: dict[str, Rows] = {}
        self.hits = self.misses = 0

    def features(self, videos: list, tower: Callable[[list], Rows], device: torch.device) -> Rows:
        """The tower's output for ``videos`` (features (N, D), extras), running it only on
        clips not seen before; clips without a key always run and are never kept."""
        todo = [v for v in videos if v.key is None or v.key not in self.rows]
        fresh: dict[int, Rows] = {}
        if todo:
            feats, extras = tower(todo)  # (sum of todo's n_tokens, D)
            start = 0
            for v in todo:
                end = start + v.n_tokens
                rows = (_slice(feats, start, end), _slice(extras, start, end))
                fresh[id(v)] = rows
                size = _nbytes(rows[0]) + _nbytes(rows[1])
                if v.key is not None and v.key not in self.rows and self.bytes + size <= self.max_bytes:
                    self.rows[v.key] = rows
                    self.bytes += size
                start = end
            if start != feats.shape[0]:
                raise ValueError(f"the tower returned {feats.shape[0]} rows for clips of {start} tokens")
        self.misses += len(todo)
        self.hits += len(videos) - len(todo)
        parts = [fresh[id(v)] if id(v) in fresh else self.rows[v.key] for v in videos]
        return _cat([p[0] for p in parts], device), _cat([p[1] for p in parts], device)
