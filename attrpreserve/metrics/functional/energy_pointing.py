"""Energy-based pointing game (Wang et al., Score-CAM, 2020): the share of a map's positive
energy that lies on the object.

Per map: ``e = sum(relu(map) * object) / sum(relu(map))`` over the valid pixels, and ``e = 0``
when the map has no positive energy (as the code of Rao et al., ICCV 2023, "Studying How to
Efficiently and Effectively Guide Models with Explanations": maps clamped to positive values,
zero-energy maps score 0). The metric is the mean of ``e`` over the maps with a non-empty object.
Unlike the pointing game it rewards maps that are concentrated on the object, not only peaked there.
"""

from typing import Optional

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import (
    _check_maps_and_masks,
    _check_zero_division,
    _divide,
    _flat_maps_and_masks,
)


def _energy_pointing_arg_validation(zero_division: float = float("nan")) -> None:
    _check_zero_division(zero_division)


def _energy_per_map(scores: Tensor, masks: Tensor, ignore: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(energy share [N] float64, counted [N] bool)`` of flattened ``(N, H*W)`` inputs; a map
    whose object is empty (after ``ignore``) is not counted."""
    energy = scores.double().clamp(min=0)
    if ignore is not None:
        energy = energy.masked_fill(ignore, 0.0)
        masks = masks & ~ignore
    total = energy.sum(dim=1)
    inside = (energy * masks).sum(dim=1)
    share = torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return share, masks.any(dim=1)


def _energy_pointing_update(
    scores: Tensor, masks: Tensor, ignore: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(energy_sum float64, count int64, num_skipped int64)`` of one batch (formatted inputs)."""
    share, counted = _energy_per_map(scores, masks, ignore)
    return (share * counted).sum(), counted.sum(), (~counted).sum()


def _energy_pointing_compute(energy_sum: Tensor, count: Tensor, zero_division: float = float("nan")) -> Tensor:
    return _divide(energy_sum, count, zero_division, "EnergyPointingGame")


def energy_pointing_game(
    heatmaps: Tensor,
    masks: Tensor,
    ignore: Optional[Tensor] = None,
    zero_division: float = float("nan"),
    validate_args: bool = True,
) -> Tensor:
    """Mean share of each map's positive energy inside its object.

    Args:
        heatmaps: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps (negative values count as 0).
        masks: same shape, bool or {0, 1}: the object (a segmentation mask or the union of boxes).
        ignore: optional, same shape: pixels left out of both sums (VOC void).
        zero_division: returned (with a warning) when no map had a non-empty object.
        validate_args: check shapes and values.

    Returns:
        Scalar float32 in [0, 1].

    Raises:
        ValueError: a bad ``zero_division``, or (with ``validate_args``) shapes that differ,
            non-binary masks, NaN/inf heatmaps.

    Example:
        >>> heatmaps = torch.tensor([[[3.0, 1.0], [-5.0, 0.0]], [[0.0, -1.0], [0.0, 0.0]]])
        >>> masks = torch.tensor([[[1, 0], [1, 0]], [[1, 1], [0, 0]]])
        >>> energy_pointing_game(heatmaps, masks)  # (3 / 4 + 0) / 2: the second map has no energy
        tensor(0.3750)
    """
    if validate_args:
        _energy_pointing_arg_validation(zero_division)
        _check_maps_and_masks(heatmaps, masks, ignore)
    scores, masks, ignore = _flat_maps_and_masks(heatmaps, masks, ignore)
    energy_sum, count, _ = _energy_pointing_update(scores, masks, ignore)
    return _energy_pointing_compute(energy_sum, count, zero_division)
