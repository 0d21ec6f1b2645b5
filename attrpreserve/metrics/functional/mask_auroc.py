"""Per-map pixel ROC-AUC of a heatmap against an object mask, averaged over maps."""

from typing import Optional

import torch
from torch import Tensor

from attrpreserve.metrics.functional._checks import (
    _check_maps_and_masks,
    _check_zero_division,
    _divide,
    _flat_maps_and_masks,
)


def _mask_auroc_arg_validation(normalize: bool = False, zero_division: float = float("nan")) -> None:
    if not isinstance(normalize, bool):
        raise ValueError(f"Expected argument `normalize` to be a bool, but got {normalize!r}")
    _check_zero_division(zero_division)


_mask_auroc_tensor_validation = _check_maps_and_masks  # heatmaps (N, [1,] H, W), binary masks/ignore


_mask_auroc_format = _flat_maps_and_masks  # (N, H*W): float scores, bool masks, bool ignore


def _minmax_valid(scores: Tensor, valid: Tensor) -> Tensor:
    """Per-row min-max over the valid entries, in float64; constant rows become 0."""
    scores = scores.double()
    low = scores.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    high = scores.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    span = high - low
    ok = span > 0  # False for constant rows and rows with no valid entry
    return torch.where(ok & valid, (scores - low) / torch.where(ok, span, 1.0), 0.0)


def _per_map_auroc(scores: Tensor, masks: Tensor, ignore: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Exact ROC-AUC of each row, ``(N,)`` float64, and whether it is defined, ``(N,)`` bool.

    Mann-Whitney U with average ranks for ties (what sklearn's ``roc_auc_score`` computes):
    ``AUC = (R_pos - P (P + 1) / 2) / (P N)`` with ``R_pos`` the rank sum of the positives.
    One sort per row; the rank of a valid pixel is counted among valid pixels only, so ignored
    pixels need no sentinel value. Ranks are doubled to stay integers (exact for any size).
    """
    n, length = scores.shape
    valid = torch.ones_like(masks) if ignore is None else ~ignore
    sorted_scores, order = torch.sort(scores, dim=1)
    is_valid = valid.gather(1, order)
    is_pos = masks.gather(1, order) & is_valid
    # tie groups of equal scores: a group starts where the score changes
    starts = torch.ones_like(is_valid)
    starts[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    ends = torch.ones_like(is_valid)
    ends[:, :-1] = starts[:, 1:]
    valid_through = is_valid.long().cumsum(dim=1)
    valid_before = valid_through - is_valid.long()
    # valid pixels before the group, and up to its end, broadcast to every member of the group
    group_before = torch.where(starts, valid_before, 0).cummax(dim=1).values
    group_through = torch.where(ends, valid_through, length + 1).flip(1).cummin(dim=1).values.flip(1)
    twice_rank = group_before + group_through + 1  # 2 * (before + (size + 1) / 2)
    num_pos = is_pos.sum(dim=1)
    num_neg = is_valid.sum(dim=1) - num_pos
    twice_u = (twice_rank * is_pos).sum(dim=1) - num_pos * (num_pos + 1)
    defined = (num_pos > 0) & (num_neg > 0)
    auc = twice_u.double() / (2 * num_pos * num_neg).clamp(min=1).double()
    return torch.where(defined, auc, 0.0), defined


def _mask_auroc_update(
    scores: Tensor, masks: Tensor, ignore: Optional[Tensor] = None, normalize: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(auc_sum float64, count int64, num_skipped int64)`` of one batch (formatted inputs)."""
    if normalize:
        scores = _minmax_valid(scores, torch.ones_like(masks) if ignore is None else ~ignore)
    auc, defined = _per_map_auroc(scores, masks, ignore)
    return auc.sum(), defined.sum(), (~defined).sum()


def _mask_auroc_compute(auc_sum: Tensor, count: Tensor, zero_division: float = float("nan")) -> Tensor:
    return _divide(auc_sum, count, zero_division, "MaskAUROC")


def mask_auroc(
    heatmaps: Tensor,
    masks: Tensor,
    ignore: Optional[Tensor] = None,
    normalize: bool = False,
    zero_division: float = float("nan"),
    validate_args: bool = True,
) -> Tensor:
    """Mean over maps of the pixel ROC-AUC of each heatmap against its mask.

    Each map's AUC is exact (ties get average ranks, as in sklearn's ``roc_auc_score``) and is
    computed over the pixels not marked in ``ignore``. Maps whose valid pixels are all object or
    all background have no AUC and are skipped.

    Args:
        heatmaps: ``(N, H, W)`` or ``(N, 1, H, W)`` real-valued maps (higher = more object).
        masks: same shape; bool or {0, 1}, the object pixels (the positives).
        ignore: optional, same shape; bool or {0, 1}, pixels left out (VOC void).
        normalize: min-max each map over its valid pixels first, as the paper does; AUC depends
            only on the order of the pixels, so this does not change the result.
        zero_division: returned (with a warning) when no map had an AUC.
        validate_args: check the tensors' shapes and values.

    Returns:
        Scalar float32 mean AUC in [0, 1].

    Raises:
        ValueError: if ``normalize`` is not a bool or ``zero_division`` not a float, or, with
            ``validate_args``, if the shapes differ, masks/ignore are not binary or heatmaps hold
            NaN/inf.

    Example:
        >>> import torch
        >>> from attrpreserve.metrics.functional import mask_auroc
        >>> heatmaps = torch.tensor([[[0.9, 0.1], [0.2, 0.4]]])
        >>> masks = torch.tensor([[[1, 0], [1, 0]]])
        >>> mask_auroc(heatmaps, masks)  # 3 of 4 (object, background) pairs ordered right
        tensor(0.7500)
        >>> mask_auroc(heatmaps, masks, ignore=torch.tensor([[[0, 0], [0, 1]]]))
        tensor(1.)
    """
    if validate_args:
        _mask_auroc_arg_validation(normalize, zero_division)
        _mask_auroc_tensor_validation(heatmaps, masks, ignore)
    scores, masks, ignore = _mask_auroc_format(heatmaps, masks, ignore)
    auc_sum, count, _ = _mask_auroc_update(scores, masks, ignore, normalize)
    return _mask_auroc_compute(auc_sum, count, zero_division)
