"""Resolve attribution-layer names (``pool5``, ``conv5_3`` or dotted module names) to modules.

A model names its attribution layers in ``attribution_layers`` (name -> dotted module name). On
our VGGs ``pool5`` and ``conv5_3`` are aliases for a role, whatever the depth: ``pool5`` is the
last max-pool and ``conv5_3`` the ReLU after the last conv (on the three-block ``vgg_small``
they are ``pool3`` and ``conv3_2``; see :mod:`attrpreserve.models.vgg`). A dotted name from
``named_modules()`` works on any model.
"""

from __future__ import annotations

import difflib

from torch import nn


def layer_names(model: nn.Module) -> dict[str, str]:
    """Alias -> dotted module name for every named attribution layer of ``model`` (may be empty)."""
    return dict(getattr(model, "attribution_layers", {}))


def resolve_layer_name(model: nn.Module, layer: str | None) -> str:
    """Return the dotted module name for an alias, a dotted name, or ``None`` (the model default).

    ``"pool5"`` and ``"conv5_3"`` resolve to the last max-pool and the last conv's ReLU of any of
    our VGGs (on ``vgg_small``, ``pool3`` and ``conv3_2``).

    Raises:
        ValueError: the name is neither an alias of the model nor one of its modules; the
            message lists the aliases.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> resolve_layer_name(vgg_small(), "pool5")  # vgg_small's last pool, pool3
        'features.14'
        >>> resolve_layer_name(vgg_small(), "conv5_3") == resolve_layer_name(vgg_small(), "conv3_2")
        True
    """
    aliases = layer_names(model)
    if layer is None:
        layer = getattr(model, "default_attribution_layer", None)
        if layer is None:
            raise ValueError(
                f"Expected argument `layer` to name a module of {type(model).__name__}: the model has no "
                "default attribution layer."
            )
    if layer in aliases:
        return aliases[layer]
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer
    known = ", ".join(aliases) if aliases else ", ".join(candidate_layers(model))
    close = difflib.get_close_matches(layer, [*aliases, *(n for n in modules if n)], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Expected argument `layer` to be an attribution layer of {type(model).__name__}, but got {layer!r}.{hint} "
        f"Available: {known}{'' if aliases else ' (or any dotted name of named_modules())'}."
    )


# Modules whose output is a spatial feature map worth attributing at (Grad-CAM's usual places).
_SPATIAL = (nn.Conv2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)


def candidate_layers(model: nn.Module, limit: int = 12) -> list[str]:
    """Dotted names a layer method can use, last layers first: the blocks of the top-level stages
    (``layer4``, ``layer4.1``, ``features``) and their convolution, activation and pooling leaves.

    Example:
        >>> import torchvision
        >>> candidate_layers(torchvision.models.resnet18(), limit=4)
        ['layer4', 'layer4.1', 'layer4.1.bn2', 'layer4.1.conv2']
    """
    names: list[str] = []
    for name, module in reversed(list(model.named_modules())):
        if not name:
            continue
        depth = name.count(".")
        has_spatial_child = any(isinstance(m, _SPATIAL) for m in module.modules() if m is not module)
        if isinstance(module, _SPATIAL) or (depth <= 1 and has_spatial_child):
            names.append(name)
    # Stages and blocks first (the usual choices), then their leaves, each in reverse execution order.
    names.sort(key=lambda n: n.count("."))
    stages = [n for n in names if n.count(".") == 0]
    blocks = [n for n in names if n.count(".") == 1]
    leaves = [n for n in names if n.count(".") > 1]
    ordered = [*stages[:1], *blocks[:1], *leaves, *stages[1:], *blocks[1:]]
    return ordered[:limit]


def resolve_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """Module for ``layer`` (see :func:`resolve_layer_name`)."""
    return model.get_submodule(resolve_layer_name(model, layer))
