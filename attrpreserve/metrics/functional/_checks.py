"""Argument and tensor checks and formatting shared by the metric functionals (private)."""

from typing import Optional

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn


def _check_zero_division(zero_division: float) -> None:
    if isinstance(zero_division, bool) or not isinstance(zero_division, (int, float)):
        raise ValueError(
            f"Expected argument `zero_division` to be a float (nan allowed), but got {zero_division!r}"
        )


def _check_validate_args(validate_args: bool) -> None:
    if not isinstance(validate_args, bool):
        raise ValueError(f"Expected argument `validate_args` to be a bool, but got {validate_args!r}")


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}")


def _format_maps(x: Tensor) -> Tensor:
    """``(N, 1, H, W)`` -> ``(N, H, W)``; other shapes pass unchanged."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def _as_float(x: Tensor) -> Tensor:
    """Half, bfloat16, integer and bool inputs become float32; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_map_shape(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"Expected `{name}` to be a tensor, but got {type(x).__name__}")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[1] == 1)):
        raise ValueError(f"Expected `{name}` to have shape (N, H, W) or (N, 1, H, W), but got {tuple(x.shape)}")


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """ValueError naming both shapes (torchmetrics' own check raises RuntimeError)."""
    if _format_maps(a).shape != _format_maps(b).shape:
        raise ValueError(
            f"Expected `{name_a}` and `{name_b}` to have the same shape, but got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_real(x: Tensor, name: str) -> None:
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"Expected `{name}` to be a real-valued (float or integer) tensor, but got dtype {x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected `{name}` to contain only finite values, but got NaN or inf")


def _check_binary(x: Tensor, name: str) -> None:
    """Bool, or numbers that are all 0 or 1."""
    if x.dtype == torch.bool:
        return
    if x.is_complex() or bool(((x != 0) & (x != 1)).any()):
        values = torch.unique(x.detach().flatten()[:1000].cpu()).tolist()[:10]
        raise ValueError(f"Expected `{name}` to be bool or contain only 0 and 1, but got values such as {values}")


def _check_maps_and_masks(
    heatmaps: Tensor, masks: Tensor, ignore: Optional[Tensor] = None, heatmaps_name: str = "heatmaps"
) -> None:
    """The one validation of (heatmap, mask[, ignore]) inputs every localisation metric uses.

    ``heatmaps``: ``(N, H, W)`` or ``(N, 1, H, W)``, real and finite; ``masks`` and ``ignore``:
    the same shape, bool or {0, 1}.

    Raises:
        ValueError: naming the argument and what it got.
    """
    _check_map_shape(heatmaps, heatmaps_name)
    _check_map_shape(masks, "masks")
    _check_same_shape(heatmaps, masks, heatmaps_name, "masks")
    _check_real(heatmaps, heatmaps_name)
    _check_binary(masks, "masks")
    if ignore is not None:
        _check_map_shape(ignore, "ignore")
        _check_same_shape(masks, ignore, "masks", "ignore")
        _check_binary(ignore, "ignore")


def _format_maps_and_masks(
    heatmaps: Tensor, masks: Tensor, ignore: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(N, H, W)`` float heatmaps (float32 unless float64), bool masks and bool ignore."""
    heatmaps = _as_float(_format_maps(heatmaps))
    masks = _format_maps(masks).bool()
    if ignore is not None:
        ignore = _format_maps(ignore).bool()
    return heatmaps, masks, ignore


def _flat_maps_and_masks(
    heatmaps: Tensor, masks: Tensor, ignore: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """:func:`_format_maps_and_masks`, each map flattened to a row: ``(N, H*W)``."""
    n = heatmaps.shape[0]
    scores, masks, ignore = _format_maps_and_masks(heatmaps, masks, ignore)
    return scores.reshape(n, -1), masks.reshape(n, -1), None if ignore is None else ignore.reshape(n, -1)


def _check_classes(classes: Optional[Tensor], n: int, num_classes: int) -> None:
    if not isinstance(classes, Tensor):
        raise ValueError(f"Expected `classes` to be a tensor of class indices, but got {type(classes).__name__}")
    if classes.shape != (n,):
        raise ValueError(f"Expected `classes` to have shape ({n},), one class per map, but got {tuple(classes.shape)}")
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise ValueError(f"Expected `classes` to be an integer tensor, but got dtype {classes.dtype}")
    if n and bool(((classes < 0) | (classes >= num_classes)).any()):
        raise ValueError(
            f"Expected `classes` to lie in [0, {num_classes}), but got values from {int(classes.min())}"
            f" to {int(classes.max())}"
        )


def _divide(num: Tensor, den: Tensor, zero_division: float, what: str) -> Tensor:
    """``num / den`` as float32; ``zero_division`` (with a warning) where ``den`` is zero.

    One policy for every metric here: a mean over no maps is not a number we can report, so it
    is ``zero_division`` (default nan) and a warning says so.
    """
    out = num.double() / den.double().clamp(min=1)
    empty = den == 0
    if bool(empty.any()):
        rank_zero_warn(
            f"{what}: nothing was counted (no valid maps); returning `zero_division`={zero_division}.", UserWarning
        )
        out = torch.where(empty, torch.full_like(out, zero_division), out)
    return out.float()

