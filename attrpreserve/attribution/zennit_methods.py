"""zennit adapter: LRP and Excitation Backprop on VGG-style chains.

zennit's rules see modules, not functions, so the model must be a chain of supported leaves (see
:func:`check_zennit_model`); BatchNorm is merged into the conv before it by an exact
``VGGCanonizer`` for the call only. Composites and canonizers live inside zennit's context manager,
so no hook outlives a call. captum-style ``classes`` become a one-hot ``attr_output``.

Shapes: ``images [B, 3, H, W]``, pairs long ``[N]``; maps ``[N, H, W]``, the input relevance
summed over colour channels (signed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attrpreserve.attribution.registry import _check_output, _no_layer

LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus", "alpha1_beta0")
ZENNIT_LEAVES = (nn.Dropout, nn.Flatten, nn.Identity)
"""Leaf modules with no rule of their own that zennit passes through (identity in eval mode)."""


def check_zennit_model(model: nn.Module, method: str) -> None:
    """zennit rules see modules, not functions: the model must be a chain of supported leaves in
    forward order, with every BatchNorm right after a conv/linear (what the VGG canonizer merges)."""
    from zennit.core import collect_leaves
    from zennit.types import Activation, AvgPool, BatchNorm, Linear, MaxPool

    names = {id(m): n for n, m in model.named_modules()}
    previous: nn.Module | None = None
    found_linear = False
    for leaf in collect_leaves(model):
        name = names.get(id(leaf), "?")
        if isinstance(leaf, BatchNorm):
            if not isinstance(previous, Linear):
                raise ValueError(
                    f"Method {method!r} (zennit, VGG canonizer) needs every BatchNorm right after a conv/linear layer "
                    f"so it can be merged into it, but {name!r} follows {type(previous).__name__}."
                )
        elif isinstance(leaf, Linear):
            found_linear = True
        elif not isinstance(leaf, (Activation, AvgPool, MaxPool, *ZENNIT_LEAVES)):
            raise ValueError(
                f"Method {method!r} (zennit) supports VGG-style models built from conv/linear, BatchNorm, activation, "
                f"pooling, dropout and flatten modules, but module {name!r} is a {type(leaf).__name__}."
            )
        previous = leaf
    if not found_linear:
        raise ValueError(f"Method {method!r} (zennit) needs a model with conv or linear layers; "
                         f"{type(model).__name__} has none.")


def _exact_vgg_canonizer() -> Any:
    """zennit's ``VGGCanonizer`` with the merged BatchNorm made an exact identity for the call.

    zennit folds ``gamma / sqrt(var + eps)`` into the conv and resets the BatchNorm to
    ``var = 1``, which still divides by ``sqrt(1 + eps)``: every merged layer scales outputs and
    relevance by ``(1 + eps) ** -0.5`` (about 2e-5 over four layers). Setting ``eps = 0`` while
    merged removes that; ``remove()`` restores it with the other parameters.
    """
    from zennit.torchvision import VGGCanonizer

    class ExactVGGCanonizer(VGGCanonizer):
        def register(self, linears: Any, batch_norm: nn.Module) -> None:
            super().register(linears, batch_norm)
            self.batch_norm_eps = batch_norm.eps
            batch_norm.eps = 0.0

        def remove(self) -> None:
            super().remove()
            self.batch_norm.eps = self.batch_norm_eps

    return ExactVGGCanonizer()


def _zennit_attribute(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, composite: Any,
                      scale_by_logit: bool) -> Tensor:
    """Input relevance summed over colour channels, ``[N, H, W]``; output relevance is the one-hot
    target, times the target logit when ``scale_by_logit``."""
    from zennit.attribution import Gradient

    inputs = images[image_index].clone().requires_grad_(True)

    def attr_output(output: Tensor) -> Tensor:
        _check_output(output, classes.numel(), classes)
        target = torch.zeros_like(output)
        value = output.detach().gather(1, classes[:, None]) if scale_by_logit else 1.0
        return target.scatter_(1, classes[:, None], value)

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(inputs, attr_output)
    return relevance.detach().sum(dim=1)


def _check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"Expected argument `{name}` to be a number >= 0, but got {value!r}.")


def lrp(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
        composite: str = "epsilon_plus_flat", epsilon: float = 1e-6, stabilizer: float = 1e-6,
        relevance: str = "logit") -> Tensor:
    """LRP with a zennit composite and ``VGGCanonizer`` (BatchNorm merged for the call only)."""
    from zennit.composites import EpsilonPlus, EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta
    from zennit.types import Linear

    _no_layer("lrp", layer)
    if composite not in LRP_COMPOSITES:
        raise ValueError(f"Expected argument `composite` to be one of {LRP_COMPOSITES}, but got {composite!r}.")
    if relevance not in ("logit", "one"):
        raise ValueError(f"Expected argument `relevance` to be 'logit' or 'one', but got {relevance!r}.")
    _check_non_negative("epsilon", epsilon)
    _check_non_negative("stabilizer", stabilizer)
    check_zennit_model(model, "lrp")
    canonizers = [_exact_vgg_canonizer()]
    if composite == "epsilon_plus_flat":
        rules = EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    elif composite == "epsilon_plus":
        rules = EpsilonPlus(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    else:
        layer_map = layer_map_base(stabilizer) + [(Linear, AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer))]
        rules = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    return _zennit_attribute(model, images, image_index, classes, rules, scale_by_logit=relevance == "logit")


def ebp(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
        stabilizer: float = 1e-6) -> Tensor:
    """Excitation Backprop (zennit composite, ``VGGCanonizer``) from a one-hot top-down signal."""
    from zennit.composites import ExcitationBackprop

    _no_layer("ebp", layer)
    _check_non_negative("stabilizer", stabilizer)
    check_zennit_model(model, "ebp")
    rules = ExcitationBackprop(stabilizer=stabilizer, canonizers=[_exact_vgg_canonizer()])
    return _zennit_attribute(model, images, image_index, classes, rules, scale_by_logit=False)


__all__ = ["LRP_COMPOSITES", "ZENNIT_LEAVES", "check_zennit_model", "ebp", "lrp"]
