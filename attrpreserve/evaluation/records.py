"""Per-pair values kept over an evaluation (for per-class tables and bootstrap intervals).

The headline numbers come from sum-state metrics; intervals and per-class splits need the value
of every scored pair. :class:`PairRecords` keeps them as list states reduced with ``"cat"``, so
under DDP ``compute()`` gathers every rank's pairs (torchmetrics pads uneven shares). A pair
costs a few float32 numbers (about 12 bytes a field), nothing per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from attrpreserve.metrics.functional.energy_pointing import _energy_per_map
from attrpreserve.metrics.functional.mask_auroc import _per_map_auroc
from attrpreserve.metrics.functional.pointing_game import _pointing_game_points


class PairRecords(Metric):
    """Concatenates named per-pair float32 vectors over updates (and ranks).

    Args:
        fields: names of the vectors; ``update(**{name: (N,) tensor})`` gives each of them.

    Raises:
        ValueError: empty or repeated ``fields``; an update missing a field or with unequal lengths.

    Example:
        >>> records = PairRecords(["hit", "auc"])
        >>> records.update(hit=torch.tensor([1.0, 0.0]), auc=torch.tensor([0.5, float("nan")]))
        >>> records.update(hit=torch.tensor([1.0]), auc=torch.tensor([1.0]))
        >>> records.compute()["hit"]
        tensor([1., 0., 1.])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, fields: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = list(fields)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"Expected argument `fields` to be distinct non-empty names, but got {fields!r}.")
        self.fields = tuple(names)
        for name in self.fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **values: Tensor) -> None:
        """Append one batch: a ``(N,)`` tensor per field."""
        if set(values) != set(self.fields):
            raise ValueError(f"Expected the fields {list(self.fields)}, but got {sorted(values)}.")
        lengths = {v.numel() for v in values.values()}
        if len(lengths) != 1:
            raise ValueError(f"Expected every field to hold the same number of pairs, but got {sorted(lengths)}.")
        for name, value in values.items():
            getattr(self, name).append(value.detach().reshape(-1).float())

    def compute(self) -> dict[str, Tensor]:
        """Every field's values over all updates (and ranks), ``(total,)`` float32."""
        out = {}
        for name in self.fields:
            state = getattr(self, name)
            out[name] = dim_zero_cat(state) if (isinstance(state, Tensor) or state) else torch.zeros(0)
        return out


def pair_hits(maps: Tensor, objects: Tensor, ignore: Optional[Tensor], tolerance: float) -> Tensor:
    """``[N]`` bool: each map's first maximum (ignored pixels excluded) lies within ``tolerance`` px
    (strictly; the point itself always counts) of its object, as :class:`~attrpreserve.metrics.PointingGame`.

    Example:
        >>> maps = torch.zeros(2, 4, 4); maps[0, 0, 0] = 1; maps[1, 3, 3] = 1
        >>> objects = torch.zeros(2, 4, 4, dtype=torch.bool); objects[:, 0, 2] = True
        >>> pair_hits(maps, objects, None, 0).tolist(), pair_hits(maps, objects, None, 3).tolist()
        ([False, False], [True, False])
    """
    n, h, w = maps.shape
    if ignore is not None:
        objects = objects & ~ignore
    point = _pointing_game_points(maps, ignore)
    rows = (torch.arange(h, device=maps.device) - (point // w)[:, None]) ** 2
    cols = (torch.arange(w, device=maps.device) - (point % w)[:, None]) ** 2
    dist2 = rows[:, :, None] + cols[:, None, :]
    return (((dist2 < tolerance ** 2) | (dist2 == 0)) & objects).flatten(1).any(dim=1)


def pair_values(maps: Tensor, objects: Tensor, ignore: Optional[Tensor], tolerance: float) -> dict[str, Tensor]:
    """``{"hit", "auc", "energy"}`` per pair, float32 ``[N]``: pointing hit (0/1), pixel ROC-AUC
    (nan where undefined) and energy share inside the object (nan for an empty object).

    Example:
        >>> maps = torch.tensor([[[0.9, 0.1], [0.2, 0.4]]])
        >>> values = pair_values(maps, torch.tensor([[[True, False], [True, False]]]), None, 0)
        >>> [round(float(values[k]), 4) for k in ("hit", "auc", "energy")]
        [1.0, 0.75, 0.6875]
    """
    n = maps.shape[0]
    flat_maps, flat_objects = maps.reshape(n, -1), objects.reshape(n, -1)
    flat_ignore = None if ignore is None else ignore.reshape(n, -1)
    auc, defined = _per_map_auroc(flat_maps, flat_objects, flat_ignore)
    energy, counted = _energy_per_map(flat_maps, flat_objects, flat_ignore)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=maps.device)
    return {"hit": pair_hits(maps, objects, ignore, tolerance).float(),
            "auc": torch.where(defined, auc, nan).float(), "energy": torch.where(counted, energy, nan).float()}


__all__ = ["PairRecords", "pair_hits", "pair_values"]
