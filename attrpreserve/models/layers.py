"""Resolve attribution-layer names (``pool5``, ``conv5_3`` or dotted module names) to modules."""

from __future__ import annotations

from torch import nn


def layer_names(model: nn.Module) -> dict[str, str]:
    """Alias -> dotted module name for every named attribution layer of ``model`` (may be empty)."""
    return dict(getattr(model, "attribution_layers", {}))


def resolve_layer_name(model: nn.Module, layer: str | None) -> str:
    """Return the dotted module name for an alias, a dotted name, or ``None`` (the model default).

    Raises:
        ValueError: the name is neither an alias of the model nor one of its modules; the
            message lists the aliases.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> resolve_layer_name(vgg_small(), "pool5")
        'features.14'
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
    known = ", ".join(aliases) if aliases else "(no aliases; use a dotted name from named_modules())"
    raise ValueError(
        f"Expected argument `layer` to be an attribution layer of {type(model).__name__}, but got {layer!r}. "
        f"Available: {known}."
    )


def resolve_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """Module for ``layer`` (see :func:`resolve_layer_name`)."""
    return model.get_submodule(resolve_layer_name(model, layer))
