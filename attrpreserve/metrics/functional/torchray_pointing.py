"""TorchRay's pointing game: hits within 15 px, accuracy averaged over all classes.

TorchRay (``torchray/benchmark/pointing_game.py``, ``PointingGame``/``PointingGameBenchmark``)
defines, for one (image, class) pair with object region ``mask`` (on VOC 2007 the union of the
class's boxes, rows ``ymin-1..ymax-1`` x columns ``xmin-1..xmax-1``) and predicted point
``(u, v)`` (column, row; the first maximum of the map resized to the image):

- **hit** when some mask pixel ``(y, x)`` has ``(y - v)^2 + (x - u)^2 < tolerance^2`` (strictly,
  ``tolerance=15``), else a **miss**;
- **skipped** (neither) when every box of the class is ``difficult``, or, on the difficult
  subset, when the pair is not flagged difficult;
- per class ``accuracy_c = hits_c / max(hits_c + misses_c, 1)``; **accuracy = mean over all
  classes** (a class with no counted pair contributes 0).

Here the pair's region arrives as a mask (from a segmentation mask or from boxes, see
:func:`attrpreserve.data.boxes.box_masks`); the point is the first maximum in row-major order
(``torch.argmax``'s rule), ignored pixels excluded. Maps with an empty region (after ``ignore``)
are skipped and counted in ``num_skipped``; TorchRay never sees one.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import _check_positive_int
from attrpreserve.metrics.functional.pointing_game import (
    _pointing_game_format,
    _pointing_game_tensor_validation,
    _pointing_game_update,
)


def _torchray_pointing_game_arg_validation(num_classes: int, tolerance: float = 15) -> None:
    _check_positive_int(num_classes, "num_classes")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
        math.isfinite(tolerance) and tolerance > 0
    ):
        raise ValueError(f"Expected argument `tolerance` to be a positive number of pixels, but got {tolerance!r}")


def _torchray_pointing_game_update(
    heatmaps: Tensor, masks: Tensor, classes: Tensor, ignore: Optional[Tensor], tolerance: float, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(hits [K], counted [K], num_skipped)`` of one batch (formatted inputs)."""
    return _pointing_game_update(heatmaps, masks, classes, ignore, tolerance, num_classes)


def _torchray_class_accuracies(hits: Tensor, count: Tensor) -> Tensor:
    """``hits / max(count, 1)`` per class, float64 (TorchRay's ``class_accuracies``)."""
    return hits.double() / count.clamp(min=1).double()


def _torchray_pointing_game_compute(hits: Tensor, count: Tensor) -> Tensor:
    """Mean of the per-class accuracies over all classes (TorchRay's ``accuracy``), float32."""
    return _torchray_class_accuracies(hits, count).mean().float()


def torchray_pointing_game(
    heatmaps: Tensor,
    masks: Tensor,
    classes: Tensor,
    num_classes: int,
    ignore: Optional[Tensor] = None,
    tolerance: float = 15,
    validate_args: bool = True,
) -> Tensor:
    """TorchRay's pointing-game accuracy (see the module docstring for the exact definition).

    Args:
        heatmaps: ``(N, H, W)`` or ``(N, 1, H, W)`` maps at the resolution of the masks.
        masks: same shape, bool or {0, 1}: each pair's object region.
        classes: ``(N,)`` integer class of each map.
        num_classes: K; the accuracy is the mean over all K classes.
        ignore: optional, same shape: pixels that can neither be the maximum nor the object.
        tolerance: positive radius in pixels (TorchRay: 15).
        validate_args: check shapes and values.

    Returns:
        Scalar float32 accuracy in [0, 1].

    Raises:
        ValueError: a bad argument, or (with ``validate_args``) shapes that differ, non-binary
            masks, NaN/inf heatmaps or classes out of range.

    Example:
        >>> heatmaps = torch.zeros(3, 20, 20)
        >>> heatmaps[0, 0, 0] = heatmaps[1, 19, 19] = heatmaps[2, 0, 19] = 1.0
        >>> masks = torch.zeros(3, 20, 20, dtype=torch.bool)
        >>> masks[:, 10:, 10:] = True  # (0, 0) is 14.1 px from (10, 10): a hit; (0, 19) 10 px: a hit
        >>> torchray_pointing_game(heatmaps, masks, torch.tensor([0, 0, 1]), num_classes=3)  # (1 + 1 + 0) / 3
        tensor(0.6667)
    """
    if validate_args:
        _torchray_pointing_game_arg_validation(num_classes, tolerance)
        _pointing_game_tensor_validation(heatmaps, masks, classes, ignore, num_classes)
    heatmaps, masks, ignore = _pointing_game_format(heatmaps, masks, ignore)
    hits, count, _ = _torchray_pointing_game_update(heatmaps, masks, classes, ignore, tolerance, num_classes)
    return _torchray_pointing_game_compute(hits, count)
