"""``TorchRayPointingGame``: a torchmetrics Metric around ``functional.torchray_pointing_game``."""

from typing import Any, Optional

import torch
from torch import Tensor

from attrpreserve.metrics._base import UnitScoreMetric
from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.pointing_game import _pointing_game_format, _pointing_game_tensor_validation
from attrpreserve.metrics.functional.torchray_pointing import (
    _torchray_class_accuracies,
    _torchray_pointing_game_arg_validation,
    _torchray_pointing_game_compute,
    _torchray_pointing_game_update,
)


class TorchRayPointingGame(UnitScoreMetric):
    """TorchRay's pointing game: a hit within ``tolerance`` px (strictly), per-class accuracy,
    mean over **all** ``num_classes`` classes (see :mod:`attrpreserve.metrics.functional.torchray_pointing`).

    As input to ``forward`` and ``update``: ``heatmaps`` ``(N, H, W)`` or ``(N, 1, H, W)``,
    ``masks`` (same shape, bool or {0, 1}, the pair's object region), ``classes`` ``(N,)`` and an
    optional ``ignore`` (same shape). States are per-class sums (``hits``, ``count``), synced
    across processes. Output: scalar float32 accuracy; :meth:`class_accuracies` gives the
    ``(K,)`` per-class values.

    Args:
        num_classes: K.
        tolerance: positive radius in pixels (TorchRay: 15).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction, a bad ``num_classes``/``tolerance``/``validate_args``; on
            update (with ``validate_args``) bad shapes or values.

    Example:
        >>> heatmaps = torch.zeros(2, 20, 20)
        >>> heatmaps[0, 0, 0] = heatmaps[1, 0, 0] = 1.0
        >>> masks = torch.zeros(2, 20, 20, dtype=torch.bool)
        >>> masks[0, 10:, 10:] = True  # 14.1 px away: hit
        >>> masks[1, 11:, 11:] = True  # 15.6 px away: miss
        >>> metric = TorchRayPointingGame(num_classes=2)
        >>> metric(heatmaps, masks, torch.tensor([0, 0]))  # class 0: 1/2, class 1: no pair, 0
        tensor(0.2500)
        >>> metric.class_accuracies()
        tensor([0.5000, 0.0000], dtype=torch.float64)
    """

    hits: Tensor
    count: Tensor
    num_skipped: Tensor

    def __init__(self, num_classes: int, tolerance: float = 15, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _torchray_pointing_game_arg_validation(num_classes, tolerance)
        self.num_classes, self.tolerance, self.validate_args = num_classes, tolerance, validate_args
        self.add_state("hits", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, heatmaps: Tensor, masks: Tensor, classes: Tensor, ignore: Optional[Tensor] = None) -> None:
        """Add a batch of maps (see the class docstring for shapes)."""
        if self.validate_args:
            _pointing_game_tensor_validation(heatmaps, masks, classes, ignore, self.num_classes)
        heatmaps, masks, ignore = _pointing_game_format(heatmaps, masks, ignore)
        hits, count, skipped = _torchray_pointing_game_update(
            heatmaps, masks, classes, ignore, self.tolerance, self.num_classes)
        self._add_to_states(hits=hits, count=count, num_skipped=skipped)

    def compute(self) -> Tensor:
        """Mean per-class accuracy over all classes."""
        return _torchray_pointing_game_compute(self.hits, self.count)

    def class_accuracies(self) -> Tensor:
        """``(K,)`` float64 per-class accuracy of this process's states (TorchRay's ``class_accuracies``);
        under DDP call it inside ``with metric.sync_context():``."""
        return _torchray_class_accuracies(self.hits, self.count)
