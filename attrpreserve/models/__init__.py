"""Model builders: ``vgg16`` (teacher and /2, /4, /8 students) and ``vgg_small`` (CPU)."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from attrpreserve.models.layers import layer_names, resolve_layer, resolve_layer_name
from attrpreserve.models.vgg import VGG, vgg16, vgg_small
from attrpreserve.models.weights import CheckpointError, load_weights, read_state_dict, resolve_weights, weights_source

MODELS: dict[str, Callable[..., nn.Module]] = {"vgg16": vgg16, "vgg_small": vgg_small}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; ``None`` keyword values are dropped (left to defaults).

    Raises:
        ValueError: unknown name (the message lists the known ones).

    Example:
        >>> create_model("vgg_small", num_classes=3, weights=None).num_classes
        3
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(sorted(MODELS))}.")
    return MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments that rebuild ``model`` (``None`` for models we did not build)."""
    config = getattr(model, "config", None)
    return dict(config) if isinstance(config, dict) else None


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`model_spec`."""
    spec = dict(spec)
    return create_model(spec.pop("arch"), **spec)


__all__ = [
    "VGG", "vgg16", "vgg_small", "create_model", "MODELS", "model_spec", "build_from_spec",
    "layer_names", "resolve_layer", "resolve_layer_name", "load_weights", "read_state_dict", "CheckpointError",
    "resolve_weights", "weights_source",
]
