"""The layer-method engine: maps computed from one layer's activations and target-logit gradients
(Grad-CAM, SWA, EWA), for many (image, class) pairs from one forward.

The forward captures the layer with :func:`~attrpreserve.attribution.capture.capture_features`
and ``cut_graph=True``, the same capture the matching loss uses in training, so autograd records
only the part of the network after the layer. Pairs are split into rounds of at most one pair per
image; one ``torch.autograd.grad`` per round (seeded with the one-hot targets of its pairs) gives
all its pairs' gradients, since images do not interact in eval mode. Rounds = the largest number
of pairs of one image (1-4 on VOC).

Shapes: features and gradients ``[B, C, h, w]`` (``B`` images), pairs long ``[N]``, maps
``[N, h, w]`` at the layer's resolution (``attribute`` upsamples them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attrpreserve.attribution.capture import capture_features
from attrpreserve.attribution.maps import channel_weights, ewa_map
from attrpreserve.attribution.registry import _check_output, register_method
from attrpreserve.models.layers import resolve_layer_name


@dataclass(frozen=True)
class LayerRule:
    """How a layer method turns features and gradients into a map.

    Attributes:
        combine: ``(features [N, C, h, w], grads [N, C, h, w] or None) -> [N, h, w]``.
        needs_grad: whether ``combine`` uses the gradient of the target logit.
        default_layer: layer used when ``layer`` is ``None`` (``None``: the model's default).
    """

    combine: Callable[[Tensor, Tensor | None], Tensor]
    needs_grad: bool = True
    default_layer: str | None = None


def layer_pass(model: nn.Module, images: Tensor, rule: LayerRule, layer: str | None) -> tuple[Tensor, Tensor]:
    """One forward of the ``B`` images: ``(features [B, C, h, w], logits [B, K])``.

    The features are the layer's output cut from the graph before it (a leaf requiring grad, as
    :func:`~attrpreserve.attribution.capture.capture_features` makes it); with
    ``rule.needs_grad`` off the forward records no graph at all.

    Raises:
        ValueError: unknown layer (listing the valid ones), a layer that does not run, runs more
            than once per forward, or does not output ``[B, C, h, w]``.
    """
    layer = rule.default_layer if layer is None else layer
    name = resolve_layer_name(model, layer)
    with torch.set_grad_enabled(rule.needs_grad), capture_features(model, [name], cut_graph=True) as captured:
        logits = model(images)
    if name not in captured:
        raise ValueError(f"Layer {layer!r} ({name}) did not run in the model's forward.")
    features = captured[name]
    # capture_features cuts at the layer's first call and keeps the last: a second call leaves a
    # tensor that is not the cut leaf (it has a grad_fn, or no grad under no_grad).
    if not (features.is_leaf and features.requires_grad):
        raise ValueError(f"Layer {layer!r} ({name}) runs more than once per forward; pick a layer used once.")
    if features.ndim != 4:
        raise ValueError(f"Expected the output of layer {layer!r} ({name}) to be [B, C, h, w], but got "
                         f"{tuple(features.shape)}.")
    return features, logits


def _pair_grads(logits: Tensor, features: Tensor, image_index: Tensor, classes: Tensor) -> Tensor:
    """``d logits[i_n, k_n] / d features[i_n]`` for every pair ``n``, ``[N, C, h, w]``.

    Pairs are split into rounds holding at most one pair per image (round ``r``: each image's
    ``r``-th pair); one backward per round through the part after the layer gives all its
    pairs' gradients, since images do not interact in eval mode.
    """
    if not logits.requires_grad:
        raise ValueError("Expected the model's logits to depend on the attribution layer's output, but they do not.")
    n = image_index.numel()
    order = torch.argsort(image_index, stable=True)
    position = torch.arange(n, device=image_index.device)
    starts = torch.ones(n, dtype=torch.bool, device=image_index.device)
    starts[1:] = image_index[order][1:] != image_index[order][:-1]
    rank = torch.empty_like(position)
    rank[order] = position - torch.where(starts, position, 0).cummax(dim=0).values
    rounds = int(rank.max()) + 1
    grads = features.new_empty((n, *features.shape[1:]))
    for r in range(rounds):
        chosen = (rank == r).nonzero()[:, 0]
        seed = torch.zeros_like(logits)
        seed[image_index[chosen], classes[chosen]] = 1.0
        (grad,) = torch.autograd.grad(logits, features, seed, retain_graph=r < rounds - 1)
        grads[chosen] = grad[image_index[chosen]]
    return grads


def layer_maps(rule: LayerRule, features: Tensor, logits: Tensor, image_index: Tensor, classes: Tensor) -> Tensor:
    """Raw ``[N, h, w]`` maps of the pairs from the features and logits of :func:`layer_pass`."""
    grads = _pair_grads(logits, features, image_index, classes) if rule.needs_grad else None
    return rule.combine(features.detach()[image_index], grads)


def register_layer_method(
    name: str,
    combine: Callable[[Tensor, Tensor | None], Tensor],
    *,
    needs_grad: bool = True,
    default_layer: str | None = None,
    relu: bool = True,
    overwrite: bool = False,
) -> None:
    """Register a map computed from a layer's activations and target-logit gradients.

    The method runs one forward per image batch and one backward per round of pairs (see the
    module docstring), and can share its forward with the prediction
    (:func:`~attrpreserve.attribution.methods.predict_and_attribute`).

    Args:
        name: the ``method`` string.
        combine: see :class:`LayerRule`.
        needs_grad: pass gradients to ``combine`` (else ``None``, and no backward runs).
        default_layer: layer alias used when the caller gives none (``None``: the model default).
        relu: default of the ``relu`` flag.
        overwrite: replace an existing method of that name.

    Raises:
        ValueError: as :func:`~attrpreserve.attribution.registry.register_method`, or ``combine``
            not callable.

    Example:
        >>> from attrpreserve.attribution.methods import attribute
        >>> from attrpreserve.attribution.registry import METHODS
        >>> from attrpreserve.models import vgg_small
        >>> register_layer_method("grad_norm", lambda a, g: g.norm(dim=1), default_layer="conv5_3")
        >>> net = vgg_small(num_classes=2, width_divisor=8)
        >>> tuple(attribute(net, torch.randn(1, 3, 32, 32), [1], "grad_norm").shape)
        (1, 32, 32)
        >>> _ = METHODS.pop("grad_norm")
    """
    if not callable(combine):
        raise ValueError(f"Expected argument `combine` to be callable, but got {combine!r}.")
    rule = LayerRule(combine, bool(needs_grad), default_layer)

    def fn(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
           layer: str | None = None) -> Tensor:
        features, logits = layer_pass(model, images, rule, layer)
        _check_output(logits, images.shape[0], classes)
        return layer_maps(rule, features, logits, image_index, classes)

    fn.__doc__ = f"Layer method {name!r} (see register_layer_method)."
    register_method(name, fn, relu=relu, overwrite=overwrite, layer_rule=rule)


# -- the built-in combines ------------------------------------------------------------------------------
def _needed(grads: Tensor | None) -> Tensor:
    if grads is None:
        raise ValueError("This layer rule needs gradients: register it with needs_grad=True.")
    return grads


def gradcam_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """Grad-CAM: ``sum_c mean_hw(dy/dA_c) * A_c``."""
    return (_needed(grads).mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)


def swa_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """SWA: ``sum_c w_c * A_c``, ``w_c = sum_hw dy/dA_c`` (:func:`~attrpreserve.attribution.maps.channel_weights`)."""
    return (channel_weights(_needed(grads)) * features).sum(dim=1)


def ewa_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """EWA (:func:`~attrpreserve.attribution.maps.ewa_map`): class-independent, one map per image."""
    return ewa_map(features)[:, 0]


__all__ = ["LayerRule", "ewa_combine", "gradcam_combine", "layer_maps", "layer_pass", "register_layer_method",
           "swa_combine"]
