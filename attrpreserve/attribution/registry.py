"""The method registry: what an attribution method is, the name -> method table, and the checks
every method function shares.

A method is a function with the :data:`MethodFn` signature, registered under a name with
:func:`register_method` (layer methods with
:func:`~attrpreserve.attribution.layer_methods.register_layer_method`). The built-in methods are
registered by :mod:`attrpreserve.attribution.methods`, which importing the package runs.

Shape convention (the one :func:`~attrpreserve.attribution.methods.attribute` promises): a method
receives ``images [B, 3, H, W]`` and the pairs ``image_index``/``classes`` (long ``[N]``) and
returns one raw map per pair, ``[N, h, w]``, at any resolution; ``attribute`` then applies ReLU,
upsampling to ``[N, H, W]`` and normalisation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from attrpreserve.attribution.layer_methods import LayerRule

MethodFn = Callable[..., Tensor]
"""``fn(model, images, image_index, classes, *, layer=None, **knobs) -> Tensor [N, h, w]``.

Called with the model already in eval mode (all ``requires_grad`` off, grad mode on); ``images``
``[B, 3, H, W]``, ``image_index`` and ``classes`` long ``[N]`` (validated, ``N >= 1``). Returns the
raw map of each pair at any resolution (``attribute`` applies ReLU, upsampling, normalisation).
"""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, the default of ``attribute``'s ``relu`` flag, and for
    layer methods their :class:`~attrpreserve.attribution.layer_methods.LayerRule` (lets
    :func:`~attrpreserve.attribution.methods.predict_and_attribute` share the forward)."""

    fn: MethodFn
    relu: bool = False
    layer_rule: LayerRule | None = None


METHODS: dict[str, MethodSpec] = {}
"""Registry: method name -> :class:`MethodSpec` (fill with :func:`register_method`)."""

_FIXED_PARAMS = ("model", "images", "image_index", "classes", "layer")


def register_method(name: str, fn: MethodFn, *, relu: bool = False, overwrite: bool = False,
                    layer_rule: LayerRule | None = None) -> None:
    """Add an attribution method to :data:`METHODS` under ``name``.

    Args:
        name: the ``method`` string of :func:`~attrpreserve.attribution.methods.attribute`.
        fn: see :data:`MethodFn`; keyword parameters after ``layer`` are the method's knobs.
        relu: default of ``attribute``'s ``relu`` flag for this method.
        overwrite: replace an existing method of that name (otherwise an error).
        layer_rule: set by :func:`~attrpreserve.attribution.layer_methods.register_layer_method`.

    Raises:
        ValueError: ``name`` not a non-empty str, ``fn`` not callable, or ``name`` taken.

    Example:
        >>> from torch import nn
        >>> from attrpreserve.attribution.methods import attribute
        >>> def mean_colour(model, images, image_index, classes, *, layer=None):
        ...     return images[image_index].mean(dim=1)
        >>> register_method("mean_colour", mean_colour)
        >>> attribute(nn.Identity(), torch.ones(1, 3, 2, 2), [0], "mean_colour")
        tensor([[[1., 1.],
                 [1., 1.]]])
        >>> _ = METHODS.pop("mean_colour")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected argument `name` to be a non-empty str, but got {name!r}.")
    if not callable(fn):
        raise ValueError(f"Expected argument `fn` to be callable, but got {fn!r}.")
    if not isinstance(relu, bool):
        raise ValueError(f"Expected argument `relu` to be a bool, but got {relu!r}.")
    if name in METHODS and not overwrite:
        raise ValueError(f"Expected argument `name` to be a new method name, but {name!r} is registered; "
                         "pass overwrite=True to replace it.")
    METHODS[name] = MethodSpec(fn, relu, layer_rule)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).

    Example:
        >>> get_method("gradcam").relu  # built-ins are registered when the package is imported
        True
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"Expected argument `method` to be one of {sorted(METHODS)}, but got {name!r}.")
    return METHODS[name]


def method_knobs(name: str) -> tuple[str, ...] | None:
    """Names of the knobs method ``name`` accepts (``None``: any, the function takes ``**kwargs``).

    Example:
        >>> method_knobs("ig")
        ('n_steps', 'integration', 'internal_batch_size')
    """
    params = inspect.signature(get_method(name).fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    positional = inspect.Parameter.VAR_POSITIONAL
    return tuple(p.name for p in params if p.name not in _FIXED_PARAMS and p.kind is not positional)


def check_method(name: str, knobs: dict[str, Any] | None = None) -> None:
    """Check that ``name`` is registered and accepts every key of ``knobs`` (no work done).

    Raises:
        ValueError: unknown method, or a knob it does not take (the message lists the valid ones).

    Example:
        >>> check_method("gradcam", {"n_steps": 8})
        Traceback (most recent call last):
        ...
        ValueError: Expected the knobs of method 'gradcam' to be among (none), but got unknown ['n_steps'].
    """
    get_method(name)
    accepted = method_knobs(name)
    unknown = sorted(set(knobs or {}) - set(accepted)) if accepted is not None else []
    if unknown:
        allowed = ", ".join(accepted) if accepted else "(none)"
        raise ValueError(f"Expected the knobs of method {name!r} to be among {allowed}, but got unknown {unknown}.")


# -- what every method function shares ----------------------------------------------------------------
def _no_layer(method: str, layer: str | None) -> None:
    """Input-space methods take no ``layer``."""
    if layer is not None:
        raise ValueError(f"Expected argument `layer` to be None for method {method!r}, which attributes to the "
                         f"input, but got {layer!r}.")


def _check_output(logits: Any, rows: int, classes: Tensor) -> None:
    """The model returned ``[rows, K]`` logits and every class lies in ``[0, K)``."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected the model output to be [N={rows}, K] logits, but got {shape}.")
    if bool((classes >= logits.shape[1]).any()):
        raise ValueError(f"Expected argument `classes` to lie in [0, {logits.shape[1]}), but got "
                         f"{int(classes.max())}.")


def _check_chunk(value: int | None) -> None:
    """``internal_batch_size``: a positive int or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Expected argument `internal_batch_size` to be a positive int or None, but got {value!r}.")


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, classes: Tensor, size: int | None) -> Tensor:
    """``fn(inputs, classes)`` on chunks of ``size`` rows (``None``: one chunk), concatenated."""
    size = size or inputs.shape[0]
    return torch.cat([fn(inputs[i:i + size], classes[i:i + size]) for i in range(0, inputs.shape[0], size)])


__all__ = ["METHODS", "MethodFn", "MethodSpec", "check_method", "get_method", "method_knobs", "register_method"]
