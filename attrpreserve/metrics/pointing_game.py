"""``PointingGame``: a torchmetrics Metric around ``functional.pointing_game``."""

from typing import Any, Literal, Optional

import torch
from torch import Tensor

from attrpreserve.metrics._base import UnitScoreMetric
from attrpreserve.metrics.functional._checks import _check_validate_args
from attrpreserve.metrics.functional.pointing_game import (
    _pointing_game_arg_validation,
    _pointing_game_compute,
    _pointing_game_format,
    _pointing_game_tensor_validation,
    _pointing_game_update,
)


class PointingGame(UnitScoreMetric):
    """Pointing-game hit rate: the share of heatmaps whose maximum falls on the object.

    A map scores a hit when its maximum lies in the mask, or when some mask pixel lies at a
    Euclidean distance strictly less than ``tolerance`` pixels from it (TorchRay's rule; TorchRay
    uses 15, the paper 0). Of tied maxima the first in row-major order counts (smallest flat index,
    on every device). ``ignore`` pixels (VOC void) can neither be the maximum nor count as mask.
    Maps with an empty mask are skipped and counted in ``num_skipped`` (under DDP this rank's count
    until synced: read it inside ``with metric.sync_context():``). Heatmaps must have the masks'
    resolution (upsample them first).

    As input to ``forward`` and ``update``:

    - ``heatmaps``: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps, one per (image, class).
    - ``masks``: same shape, bool or {0, 1}: that class's object pixels.
    - ``classes``: ``(N,)`` integer class of each map; required with ``average="class"``.
    - ``ignore``: optional, same shape as ``masks``, bool or {0, 1}: pixels to leave out.

    As output of ``forward`` (the batch) and ``compute`` (all batches): a scalar float32 hit rate.

    Args:
        tolerance: non-negative radius in pixels.
        average: ``"micro"``: hits over all counted maps (the paper's point accuracy);
            ``"class"``: hit rate per class averaged over the classes seen (TorchRay's variant).
        num_classes: number of classes; required with ``average="class"``.
        zero_division: value returned, with a warning, when no map was counted (default nan).
        validate_args: check shapes and values on every update.
        kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: at construction if ``tolerance`` is negative or not a number, ``average`` is
            not ``"micro"``/``"class"``, ``num_classes`` is not a positive int where required, or
            ``zero_division``/``validate_args`` have the wrong type; on update if ``classes`` is
            missing with ``average="class"`` or, with ``validate_args``, if the shapes differ,
            masks are not binary, heatmaps hold NaN/inf or classes are out of range.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics import PointingGame
        >>> heatmaps = torch.zeros(3, 3, 3)
        >>> heatmaps[0, 0, 1] = heatmaps[1, 2, 2] = 1.0
        >>> masks = torch.zeros(3, 3, 3, dtype=torch.bool)
        >>> masks[:2, 0, :2] = True  # the third map has an empty mask
        >>> metric = PointingGame()
        >>> metric(heatmaps, masks)
        tensor(0.5000)
        >>> metric.num_skipped
        tensor(1)
        >>> per_class = PointingGame(tolerance=3, average="class", num_classes=2)
        >>> per_class.update(heatmaps, masks, classes=torch.tensor([0, 1, 1]))
        >>> per_class.compute()
        tensor(1.)
    """

    hits: Tensor
    count: Tensor
    num_skipped: Tensor

    def __init__(
        self,
        tolerance: float = 0,
        average: Literal["micro", "class"] = "micro",
        num_classes: Optional[int] = None,
        zero_division: float = float("nan"),
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_validate_args(validate_args)
        _pointing_game_arg_validation(tolerance, average, num_classes, zero_division)
        self.tolerance = tolerance
        self.average = average
        self.num_classes = num_classes
        self.zero_division = zero_division
        self.validate_args = validate_args
        shape = (num_classes,) if average == "class" else ()
        self.add_state("hits", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.tensor(0), dist_reduce_fx="sum")

    def update(
        self, heatmaps: Tensor, masks: Tensor, classes: Optional[Tensor] = None, ignore: Optional[Tensor] = None
    ) -> None:
        """Add a batch of maps (see the class docstring for shapes)."""
        if self.average == "class" and classes is None:
            raise ValueError("Expected argument `classes` to be a (N,) tensor with average='class', but got None")
        classes = classes if self.average == "class" else None
        if self.validate_args:
            _pointing_game_tensor_validation(heatmaps, masks, classes, ignore, self.num_classes)
        heatmaps, masks, ignore = _pointing_game_format(heatmaps, masks, ignore)
        hits, count, num_skipped = _pointing_game_update(
            heatmaps, masks, classes, ignore, self.tolerance, self.num_classes
        )
        self._add_to_states(hits=hits, count=count, num_skipped=num_skipped)

    def compute(self) -> Tensor:
        """Hit rate over all maps counted since the last reset."""
        return _pointing_game_compute(self.hits, self.count, self.zero_division)
