"""Pointing game: does a heatmap's maximum fall on (or near) the object's mask?"""

import math
from typing import Literal, Optional

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import (
    _check_classes,
    _check_maps_and_masks,
    _check_positive_int,
    _check_zero_division,
    _divide,
    _format_maps_and_masks,
)

_AVERAGES = ("micro", "class")


def _pointing_game_arg_validation(
    tolerance: float = 0,
    average: str = "micro",
    num_classes: Optional[int] = None,
    zero_division: float = float("nan"),
) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
        math.isfinite(tolerance) and tolerance >= 0
    ):
        raise ValueError(
            f"Expected argument `tolerance` to be a non-negative number of pixels, but got {tolerance!r}"
        )
    if average not in _AVERAGES:
        raise ValueError(f"Expected argument `average` to be one of {_AVERAGES}, but got {average!r}")
    if average == "class" or num_classes is not None:
        _check_positive_int(num_classes, "num_classes")
    _check_zero_division(zero_division)


def _pointing_game_tensor_validation(
    heatmaps: Tensor,
    masks: Tensor,
    classes: Optional[Tensor] = None,
    ignore: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
) -> None:
    _check_maps_and_masks(heatmaps, masks, ignore)
    if classes is not None and num_classes is not None:
        _check_classes(classes, heatmaps.shape[0], num_classes)


_pointing_game_format = _format_maps_and_masks  # (N, H, W): float maps, bool masks, bool ignore


def _pointing_game_points(heatmaps: Tensor, ignore: Optional[Tensor] = None) -> Tensor:
    """Flat index of each map's maximum, ``(N,)``; the smallest flat index among tied maxima.

    Taking the smallest index explicitly (rather than trusting ``argmax``'s tie rule) gives the
    same point on every device. Ignored pixels never win, even when every valid pixel is -inf.
    """
    n, h, w = heatmaps.shape
    heat = heatmaps.reshape(n, h * w)
    if ignore is None:
        candidates = heat == heat.amax(dim=1, keepdim=True)
    else:
        valid = ~ignore.reshape(n, h * w)
        top = heat.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
        candidates = (heat == top) & valid
    index = torch.arange(h * w, device=heat.device).expand(n, -1)
    first = torch.where(candidates, index, h * w).amin(dim=1)
    # a map with no candidate (all pixels ignored) has an empty mask and is skipped anyway
    return first.clamp(max=h * w - 1)


def _pointing_game_update(
    heatmaps: Tensor,
    masks: Tensor,
    classes: Optional[Tensor] = None,
    ignore: Optional[Tensor] = None,
    tolerance: float = 0,
    num_classes: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hits, counted maps and skipped maps of one batch (formatted inputs).

    Returns ``(hits, count, num_skipped)`` as int64: ``hits``/``count`` are scalars, or
    ``(num_classes,)`` vectors when ``classes`` and ``num_classes`` are given.
    """
    n, h, w = heatmaps.shape
    if ignore is not None:
        masks = masks & ~ignore
    point = _pointing_game_points(heatmaps, ignore)
    row, col = point // w, point % w
    # squared distance of every pixel to the point, (N, H, W), in integer pixels
    d_row = (torch.arange(h, device=point.device) - row[:, None]) ** 2
    d_col = (torch.arange(w, device=point.device) - col[:, None]) ** 2
    dist2 = d_row[:, :, None] + d_col[:, None, :]
    # TorchRay's acceptance region (distance < tolerance) plus the point itself (tolerance 0)
    accept = (dist2 < tolerance**2) | (dist2 == 0)
    counted = masks.reshape(n, -1).any(dim=1)
    hit = (accept & masks).reshape(n, -1).any(dim=1) & counted
    num_skipped = (~counted).sum()
    if classes is None or num_classes is None:
        return hit.sum(), counted.sum(), num_skipped
    one_hot = classes.reshape(n, 1) == torch.arange(num_classes, device=classes.device)
    return (one_hot & hit[:, None]).sum(dim=0), (one_hot & counted[:, None]).sum(dim=0), num_skipped


def _pointing_game_compute(hits: Tensor, count: Tensor, zero_division: float = float("nan")) -> Tensor:
    """Hit rate: ``hits / count`` for scalars; for per-class vectors, the mean rate over the classes seen."""
    if hits.ndim == 0:
        return _divide(hits, count, zero_division, "PointingGame")
    seen = count > 0
    rates = hits.double() / count.clamp(min=1).double()
    return _divide((rates * seen).sum(), seen.sum(), zero_division, "PointingGame")


def pointing_game(
    heatmaps: Tensor,
    masks: Tensor,
    classes: Optional[Tensor] = None,
    ignore: Optional[Tensor] = None,
    tolerance: float = 0,
    average: Literal["micro", "class"] = "micro",
    num_classes: Optional[int] = None,
    zero_division: float = float("nan"),
    validate_args: bool = True,
) -> Tensor:
    """Pointing-game hit rate of heatmaps against object masks.

    A map scores a hit when its maximum lies in the mask, or when some mask pixel lies at a
    Euclidean distance strictly less than ``tolerance`` pixels from it (TorchRay's rule, which uses
    ``tolerance=15``; ``tolerance=0`` is the plain pointing game of the paper). Of tied maxima the
    first in row-major order counts (the smallest flat index, on every device). Pixels marked in
    ``ignore`` (VOC's void border) can neither be the maximum nor count as mask. Maps whose mask is
    empty (after removing ignored pixels) are skipped. Heatmaps must already have the masks'
    resolution (upsample them first).

    Args:
        heatmaps: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps, one per (image, class).
        masks: same shape as ``heatmaps``; bool or {0, 1}, the class's object pixels.
        classes: ``(N,)`` integer class of each map; needed for ``average="class"``, else unused.
        ignore: optional, same shape as ``heatmaps``; bool or {0, 1}, pixels to leave out.
        tolerance: non-negative radius in pixels (see above).
        average: ``"micro"``: hits over all counted maps; ``"class"``: hit rate per class, averaged
            over the classes that had a counted map (TorchRay averages over all classes, counting
            an unseen class as 0; on VOC every class is seen and the two agree).
        num_classes: number of classes; needed for ``average="class"``.
        zero_division: returned (with a warning) when no map was counted.
        validate_args: check the tensors' shapes and values.

    Returns:
        Scalar float32 hit rate in [0, 1].

    Raises:
        ValueError: if an argument is not allowed (see ``PointingGame``), if ``average="class"``
            and ``classes`` is missing, or, with ``validate_args``, if the shapes differ, masks are
            not binary, heatmaps hold NaN/inf, or classes are out of range.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.functional import pointing_game
        >>> heatmaps = torch.zeros(2, 3, 3)
        >>> heatmaps[0, 0, 1] = 1.0  # maximum at the top edge
        >>> heatmaps[1, 2, 2] = 1.0  # maximum at the bottom-right corner
        >>> masks = torch.zeros(2, 3, 3, dtype=torch.bool)
        >>> masks[:, 0, :2] = True  # object: two top-left pixels
        >>> pointing_game(heatmaps, masks)
        tensor(0.5000)
        >>> pointing_game(heatmaps, masks, tolerance=3)  # (2, 2) is 2.24 px from (0, 1)
        tensor(1.)
    """
    if validate_args:
        _pointing_game_arg_validation(tolerance, average, num_classes, zero_division)
    if average == "class" and classes is None:
        raise ValueError("Expected argument `classes` to be a (N,) tensor with average='class', but got None")
    use_classes = classes if average == "class" else None
    if validate_args:
        _pointing_game_tensor_validation(heatmaps, masks, use_classes, ignore, num_classes)
    heatmaps, masks, ignore = _pointing_game_format(heatmaps, masks, ignore)
    hits, count, _ = _pointing_game_update(heatmaps, masks, use_classes, ignore, tolerance, num_classes)
    return _pointing_game_compute(hits, count, zero_division)
