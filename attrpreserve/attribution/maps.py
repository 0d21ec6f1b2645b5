"""Channel-collapsed attribution maps (Park et al. 2020): EWA, SWA and stochastic SWA.

All maps are ``[B, 1, H, W]`` and differentiable in their inputs: the student's SWA map is
built from a gradient taken with ``create_graph=True``, so the matching loss trains through it.

Mixed precision: under ``torch.autocast`` (``precision="bf16-mixed"``/``"16-mixed"``) the
features and gradients arrive in bf16/fp16; every map is computed in fp32 from an explicit
(differentiable) cast, so the sum over positions of the channel weights and the sum over
channels do not lose the map to half-precision rounding. Maps are float32 (float64 stays float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_features(features: Tensor, name: str = "features") -> None:
    if features.ndim != 4:
        raise ValueError(f"Expected argument `{name}` to be [B, C, H, W], but got shape {tuple(features.shape)}.")


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a half type (bf16, fp16), else unchanged; differentiable.

    Example:
        >>> full_precision(torch.ones(1, dtype=torch.bfloat16)).dtype, full_precision(torch.ones(1)).dtype
        (torch.float32, torch.float32)
    """
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def ewa_map(features: Tensor) -> Tensor:
    """Equally weighted map: mean over channels of ``features ** 2`` (attention transfer).

    Args:
        features: ``[B, C, H, W]`` activations.

    Returns:
        ``[B, 1, H, W]``.

    Example:
        >>> ewa_map(torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]]))
        tensor([[[[5., 2.]]]])
    """
    _check_features(features)
    return full_precision(features).pow(2).mean(dim=1, keepdim=True)


def channel_weights(grads: Tensor) -> Tensor:
    """SWA channel weights ``w_c = sum_hw dy/dA_c[h, w]`` as ``[B, C, 1, 1]``."""
    _check_features(grads, "grads")
    return full_precision(grads).sum(dim=(2, 3), keepdim=True)


def swa_map(features: Tensor, grads: Tensor) -> Tensor:
    """Sensitivity weighted map: ``ReLU(sum_c w_c * A_c)`` with ``w_c = sum_hw grads_c``.

    Grad-CAM up to the scale of the weights (Grad-CAM averages where SWA sums over positions).

    Args:
        features: ``[B, C, H, W]`` activations ``A``.
        grads: ``[B, C, H, W]`` gradient of the target score w.r.t. ``A``.

    Returns:
        ``[B, 1, H, W]``.

    Example:
        >>> a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
        >>> g = torch.tensor([[[[1.0, 0.0]], [[-0.5, 0.0]]]])
        >>> swa_map(a, g)
        tensor([[[[0., 2.]]]])
    """
    _check_features(features)
    if grads.shape != features.shape:
        raise ValueError(
            f"Expected `grads` to have the shape of `features` {tuple(features.shape)}, but got {tuple(grads.shape)}."
        )
    return F.relu((channel_weights(grads) * full_precision(features)).sum(dim=1, keepdim=True))


def channel_keep_mask(
    num_channels: int,
    drop_prob: float,
    batch_size: int = 1,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Keep-mask ``[B or 1, C, 1, 1]`` with exactly ``int(C * drop_prob)`` channels set to 0.

    One random subset for the whole batch (the reference behaviour) or one per sample.
    """
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"Expected argument `drop_prob` to be in [0, 1), but got {drop_prob!r}.")
    n_drop = int(num_channels * drop_prob)
    rows = batch_size if per_sample else 1
    # Draw on the CPU generator so a seeded run is reproducible whatever the device.
    scores = torch.rand(rows, num_channels, generator=generator)
    dropped = scores.argsort(dim=1)[:, :n_drop]
    keep = torch.ones(rows, num_channels)
    keep.scatter_(1, dropped, 0.0)
    return keep.view(rows, num_channels, 1, 1).to(device)


def sswa_map(
    features: Tensor,
    grads: Tensor,
    drop_prob: float,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
) -> Tensor:
    """Stochastic SWA: SWA with ``int(C * drop_prob)`` random channels left out of the sum.

    Args:
        features: ``[B, C, H, W]`` activations.
        grads: ``[B, C, H, W]`` gradients of the target score.
        drop_prob: fraction of channels dropped, in ``[0, 1)``.
        generator: CPU generator for the draw (reproducible runs).
        per_sample: one subset per image instead of one shared by the batch (the reference).

    Returns:
        ``[B, 1, H, W]``.

    Example:
        >>> a, g = torch.ones(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
        >>> sswa_map(a, g, drop_prob=0.5)[0, 0, 0, 0]  # 2 of 4 channels kept, weight 9 each
        tensor(18.)
    """
    _check_features(features)
    if grads.shape != features.shape:
        raise ValueError(
            f"Expected `grads` to have the shape of `features` {tuple(features.shape)}, but got {tuple(grads.shape)}."
        )
    keep = channel_keep_mask(features.shape[1], drop_prob, features.shape[0], per_sample, generator, features.device)
    features = full_precision(features)
    weights = channel_weights(grads) * keep.to(features.dtype)
    return F.relu((weights * features).sum(dim=1, keepdim=True))


def target_scores(logits: Tensor, classes: Tensor) -> Tensor:
    """Sum over the batch of each image's logit for its target class (one backward for all)."""
    return logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()


def feature_grads(
    logits: Tensor, features: Tensor, classes: Tensor, create_graph: bool = False, retain_graph: bool | None = None
) -> Tensor:
    """``d logits[b, classes[b]] / d features[b]`` for every image ``b`` in one autograd call.

    Only the feature map's gradient is asked for (never every parameter's). With
    ``create_graph=True`` the result stays in the graph (double backprop for the student);
    ``retain_graph=True`` keeps the forward graph for further gradients (several classes/terms).
    """
    (grads,) = torch.autograd.grad(
        target_scores(logits, classes), features, create_graph=create_graph, retain_graph=retain_graph
    )
    return grads
