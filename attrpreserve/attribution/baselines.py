"""Model-free baseline "methods": what a map scores without looking at the network.

``center``: a Gaussian centred on the image, the same for every image and class. Objects in
photographs sit near the centre, so this row of a table shows what guessing the centre scores
on the data: a method that does not beat it has not shown that it localises anything (TorchRay's
benchmark reports the same baseline as the point ``(w / 2, h / 2)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def center_map(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
               sigma: float = 0.25) -> Tensor:
    """A centred Gaussian per pair, ``[N, H, W]``, independent of the model, image and class.

    The peak is at ``(H / 2, W / 2)`` in pixel indices (TorchRay's centre point; for an odd size
    the two middle pixels tie and the pointing game takes the first).

    Args:
        model: unused (the method signature of :data:`~attrpreserve.attribution.methods.MethodFn`).
        images: ``[B, 3, H, W]``; only the size and device are read.
        image_index, classes: long ``[N]``, the pairs.
        layer: must be None (no layer).
        sigma: standard deviation as a fraction of the shorter image side (> 0).

    Raises:
        ValueError: a layer is given or ``sigma`` is not a positive number.

    Example:
        >>> maps = center_map(None, torch.zeros(1, 3, 4, 6), torch.tensor([0, 0]), torch.tensor([0, 1]))
        >>> tuple(maps.shape), divmod(int(maps[0].argmax()), 6), torch.equal(maps[0], maps[1])
        ((2, 4, 6), (2, 3), True)
    """
    if layer is not None:
        raise ValueError(f"Expected argument `layer` to be None for method 'center', but got {layer!r}.")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"Expected argument `sigma` to be a positive number, but got {sigma!r}.")
    h, w = images.shape[-2:]
    spread = sigma * min(h, w)
    rows = (torch.arange(h, device=images.device, dtype=images.dtype) - h / 2) ** 2
    cols = (torch.arange(w, device=images.device, dtype=images.dtype) - w / 2) ** 2
    gauss = torch.exp(-(rows[:, None] + cols[None, :]) / (2 * spread ** 2))
    return gauss.expand(image_index.numel(), h, w).clone()


__all__ = ["center_map"]
