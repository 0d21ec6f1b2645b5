"""Faithfulness: does the model's score fall when the pixels a map ranks first are removed?

Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018): pixels are ordered by the map
(highest first; ties by position), then in ``steps`` equal stages the first ``k`` pixels are
**deleted** from the image (set to ``baseline``, every colour channel) or **inserted** into a
``baseline`` image. At each stage the model's sigmoid score of the pair's class is recorded; the
curve's area (trapezoid over the fraction of pixels, in [0, 1]) summarises it. A faithful map has
a low deletion AUC and a high insertion AUC; a random pixel order gives the reference. The
default ``baseline`` 0 is the data set's mean colour for normalised inputs.

A map can localise the object well (pointing game, AUC) and still point at pixels the model does
not use; these curves ask the model itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attrpreserve.attribution.maps import full_precision

MODES = ("deletion", "insertion")


def pixel_order(maps: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[N, H*W]`` rank of each pixel: 0 for the map's highest (ties: the first in row-major
    order); with ``generator`` (and ``maps`` ignored but for its shape) a random order.

    Example:
        >>> pixel_order(torch.tensor([[[0.1, 0.9], [0.5, 0.9]]]))
        tensor([[3, 0, 2, 1]])
    """
    n, size = maps.shape[0], maps.shape[1:].numel()
    if generator is None:
        order = torch.sort(maps.reshape(n, size), dim=1, descending=True, stable=True).indices
    else:
        order = torch.argsort(torch.rand(n, size, generator=generator), dim=1).to(maps.device)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(size, device=maps.device).expand(n, -1))
    return rank


def _check_counts(steps: int, chunk: int) -> None:
    for name, value in (("steps", steps), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be a positive int, but got {value!r}.")


def _stage_logits(model: nn.Module, images: Tensor, rank: Tensor, steps: int, modes: Sequence[str],
                  baseline: float, chunk: int) -> dict[str, Tensor]:
    """``{mode: [N, steps + 1, K]}`` logits of every stage. The end stages are the whole image and
    the blank one in either mode, so they are computed once (one forward of the blank image for
    all rows) and only the ``steps - 1`` inner stages of each mode per row."""
    n, c, h, w = images.shape
    counts = torch.round(torch.arange(steps + 1, device=images.device) * (h * w) / steps).long()[1:-1]
    blank = images.new_full((1, c, h, w), baseline)
    changed = (rank[:, None, :] < counts[None, :, None]).reshape(n * (steps - 1), 1, h, w)  # [N * (S-1)] stages
    keep = torch.cat([~changed if mode == "deletion" else changed for mode in modes])
    index = torch.arange(n, device=images.device).repeat(len(modes)).repeat_interleave(steps - 1)
    with torch.no_grad():
        empty = model(blank)[0]
        logits = [empty.new_empty(0, empty.numel())]  # no rows: empty curves
        for start in range(0, n, chunk):  # the whole images
            logits.append(model(images[start:start + chunk]))
        for start in range(0, index.numel(), chunk):
            rows = slice(start, start + chunk)
            logits.append(model(torch.where(keep[rows], images[index[rows]], blank)))
    flat = full_precision(torch.cat(logits))  # scores in float32 under autocast
    whole, staged = flat[:n], flat[n:].reshape(len(modes), n, steps - 1, empty.numel())
    ends = {"deletion": (whole, empty.expand_as(whole)), "insertion": (empty.expand_as(whole), whole)}
    return {mode: torch.cat([ends[mode][0][:, None], staged[i], ends[mode][1][:, None]], dim=1)
            for i, mode in enumerate(modes)}


def perturbation_scores(model: nn.Module, images: Tensor, classes: Tensor, rank: Tensor, steps: int = 20,
                        mode: str = "deletion", baseline: float = 0.0, chunk: int = 64) -> Tensor:
    """The model's sigmoid score of ``classes`` at each stage, ``[N, steps + 1]``.

    Args:
        model: classifier ``[B, C, H, W] -> [B, K]`` logits (used as given: call it in eval mode).
        images: ``[N, C, H, W]``, one image per pair.
        classes: long ``[N]``.
        rank: ``[N, H*W]`` from :func:`pixel_order`.
        steps: stages after the first (stage ``s`` changes the first ``round(s * H * W / steps)`` pixels).
        mode: ``"deletion"`` or ``"insertion"``.
        baseline: value of a deleted (or not yet inserted) pixel.
        chunk: images per forward.

    Raises:
        ValueError: bad ``steps``, ``mode`` or ``chunk``.
    """
    if mode not in MODES:
        raise ValueError(f"Expected argument `mode` to be one of {MODES}, but got {mode!r}.")
    _check_counts(steps, chunk)
    return _class_scores(_stage_logits(model, images, rank, steps, (mode,), baseline, chunk)[mode], classes)


def _class_scores(logits: Tensor, classes: Tensor) -> Tensor:
    """``[N, S+1]`` sigmoid scores of each row's class from ``[N, S+1, K]`` stage logits."""
    return logits.gather(2, classes[:, None, None].expand(-1, logits.shape[1], 1))[..., 0].sigmoid()


def curve_auc(scores: Tensor) -> Tensor:
    """Trapezoid area of ``[N, S+1]`` curves over the fraction of pixels changed, ``[N]``.

    Example:
        >>> curve_auc(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
        tensor([0.2500, 1.0000])
    """
    return torch.trapezoid(scores, dx=1.0 / (scores.shape[1] - 1), dim=1)


def faithfulness_aucs(model: nn.Module, images: Tensor, classes: Tensor, maps: Tensor, steps: int = 20,
                      baseline: float = 0.0, generator: torch.Generator | None = None,
                      chunk: int = 64, image_index: Tensor | None = None) -> dict[str, Tensor]:
    """Deletion and insertion AUC of each pair, ``{"deletion": [N], "insertion": [N]}``, in the
    map's pixel order (or a random order with ``generator``).

    Args:
        model: classifier in eval mode; images: ``[N, C, H, W]`` (one per pair), or ``[B, C, H, W]``
            with ``image_index``; classes: ``[N]``; maps: ``[N, H, W]``; steps, baseline, chunk:
            see :func:`perturbation_scores`.
        image_index: long ``[N]``, the image of each pair in ``images``. A random order is then
            drawn per image (``[B, H*W]`` draws from ``generator``) and its curves are shared by
            the image's pairs: one forward per stage scores all of them.

    Example:
        >>> class RegionMean(nn.Module):  # logit = 4 x the mean of the top-left 2x2 block
        ...     def forward(self, x):
        ...         return 4 * x[:, :1, :2, :2].mean(dim=(1, 2, 3))[:, None]
        >>> maps = torch.zeros(1, 4, 4); maps[0, :2, :2] = 1.0  # the map is that block
        >>> aucs = faithfulness_aucs(RegionMean(), torch.ones(1, 3, 4, 4), torch.tensor([0]), maps, steps=4)
        >>> s4, s0 = torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(0.0))
        >>> torch.allclose(aucs["deletion"], 0.125 * (s4 + s0) + 0.75 * s0)  # gone after the first stage
        True
        >>> torch.allclose(aucs["insertion"], 0.125 * (s0 + s4) + 0.75 * s4)
        True
    """
    _check_counts(steps, chunk)
    if image_index is None:
        image_index = torch.arange(images.shape[0], device=images.device)
    if generator is None:  # the map's order: one row per pair
        rows, images = torch.arange(classes.numel(), device=images.device), images[image_index]
        rank = pixel_order(maps)
    else:  # a random order per image, over the images that have a pair
        used, rows = torch.unique(image_index, return_inverse=True)
        rank = pixel_order(images[:, 0], generator)[used]
        images = images[used]
    logits = _stage_logits(model, images, rank, steps, MODES, baseline, chunk)
    return {mode: curve_auc(_class_scores(logits[mode][rows], classes)) for mode in MODES}


__all__ = ["MODES", "curve_auc", "faithfulness_aucs", "perturbation_scores", "pixel_order"]
