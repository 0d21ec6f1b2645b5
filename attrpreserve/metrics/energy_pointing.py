"""``EnergyPointingGame``: a torchmetrics Metric around ``functional.energy_pointing_game``."""

from typing import Any, Optional

import torch
from torch import Tensor

from attrpreserve.metrics._base import UnitScoreMetric
from attrpreserve.metrics.functional._checks import (
    _check_maps_and_masks,
    _check_validate_args,
    _flat_maps_and_masks,
)
from attrpreserve.metrics.functional.energy_pointing import (
    _energy_pointing_arg_validation,
    _energy_pointing_compute,
    _energy_pointing_update,
)


class EnergyPointingGame(UnitScoreMetric):
    """Mean share of each map's positive energy that lies on its object (Score-CAM's energy-based
    pointing game; zero-energy maps score 0, as in Rao et al., ICCV 2023).

    As input to ``forward`` and ``update``: ``heatmaps`` ``(N, H, W)`` or ``(N, 1, H, W)``,
    ``masks`` (same shape, bool or {0, 1}) and an optional ``ignore`` (same shape). Maps with an
    empty object are skipped and counted in ``num_skipped``. States are sums (DDP-synced); output
    a scalar float32 in [0, 1].

    Args:
        zero_division: value returned, with a warning, when no map was counted (default nan).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction, a bad ``zero_division``/``validate_args``; on update (with
            ``validate_args``) bad shapes or values.

    Example:
        >>> metric = EnergyPointingGame()
        >>> heatmaps = torch.tensor([[[3.0, 1.0], [-5.0, 0.0]]])
        >>> metric(heatmaps, torch.tensor([[[1, 0], [1, 0]]]))
        tensor(0.7500)
        >>> metric(heatmaps, torch.tensor([[[0, 1], [0, 0]]]))
        tensor(0.2500)
        >>> metric.compute()
        tensor(0.5000)
    """

    energy_sum: Tensor
    count: Tensor
    num_skipped: Tensor

    def __init__(self, zero_division: float = float("nan"), validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _energy_pointing_arg_validation(zero_division)
        self.zero_division, self.validate_args = zero_division, validate_args
        self.add_state("energy_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor, ignore: Optional[Tensor] = None) -> None:
        """Add a batch of maps (see the class docstring for shapes)."""
        if self.validate_args:
            _check_maps_and_masks(heatmaps, masks, ignore)
        scores, masks, ignore = _flat_maps_and_masks(heatmaps, masks, ignore)
        energy_sum, count, skipped = _energy_pointing_update(scores, masks, ignore)
        self._add_to_states(energy_sum=energy_sum, count=count, num_skipped=skipped)

    def compute(self) -> Tensor:
        """Mean energy share over all maps counted since the last reset."""
        return _energy_pointing_compute(self.energy_sum, self.count, self.zero_division)
