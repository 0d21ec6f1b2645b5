"""DeepLIFT (Shrikumar, Greenside, Kundaje 2017) with the rescale and the reveal-cancel rule.

captum's ``DeepLift`` implements the rescale rule only; the reveal-cancel rule needs the positive
and negative parts of every difference-from-reference propagated *forwards* as well, so this is our
own layer-by-layer implementation: a forward pass records, at every layer input, the input ``x``,
the reference ``x0`` and the split ``dx = x - x0 = dx+ + dx-``; a backward pass carries two
multipliers per unit (``m+`` for ``dx+``, ``m-`` for ``dx-``) from the target logit to the input.
Attributions are ``m+ * dx+ + m- * dx-`` at the input and sum to ``f(x) - f(x0)`` for the target
(summation-to-delta).

Rules per layer type:

* **Linear, Conv1d/2d, BatchNorm (eval, an affine map)** - the paper's linear rule with separated
  contributions: with ``W+ = max(W, 0)``, ``W- = min(W, 0)``,
  ``dy+ = W+ dx+ + W- dx-`` and ``dy- = W- dx+ + W+ dx-`` (the bias cancels in differences).
* **Average pools, Flatten, Unflatten, Dropout (eval), Identity** - linear maps with non-negative
  coefficients: ``dy+ = A dx+``, ``dy- = A dx-``.
* **ReLU (and LeakyReLU, ELU, Sigmoid, Tanh, Softplus)** - ``rule="rescale"``: one multiplier
  ``dy / dx``; ``rule="reveal_cancel"``:
  ``dy+ = 1/2 (f(x0 + dx+) - f(x0)) + 1/2 (f(x0 + dx- + dx+) - f(x0 + dx-))`` (``dy-``
  symmetric), multipliers ``dy+ / dx+`` and ``dy- / dx-``. Where a denominator is below ``eps`` the
  multiplier falls back to the gradient ``f'(x)`` (the contribution is then ~0 anyway).
  The chosen rule applies to every such layer.
* **MaxPool1d/2d** - captum's treatment: the output difference ``dy`` of a window is routed to the
  arg-max of whichever of input and reference has the larger maximum (there ``|dx| >= |dy|``),
  multiplier ``dy / dx`` at that position. Overlapping windows add up, so summation-to-delta holds
  for any kernel/stride. For non-overlapping pools this is captum's rule; captum 0.9 itself departs
  from it (and from summation-to-delta) when a ReLU sits right before or after the pool, because
  its backward hooks on adjacent nonlinear modules interfere.

Supported models: an ``nn.Sequential`` (nested Sequentials are flattened), or a model exposing
``features``, ``avgpool`` and ``classifier`` whose forward is ``classifier(flatten(avgpool(
features(x)), 1))`` (our :class:`~attrpreserve.models.vgg.VGG`, torchvision's VGG); for the latter
the composed output is checked against ``model(inputs)``. The model must be in eval mode where it
matters (BatchNorm, Dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrpreserve.attribution.registry import _check_chunk, _chunked, _no_layer

RULES = ("rescale", "reveal_cancel")
DEEPLIFT_BACKENDS = ("attrpreserve", "captum")

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)
_POSITIVE_LINEAR = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout,
)
_MAXPOOL = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d}
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


@dataclass
class _State:
    """Values at one layer boundary: input, reference and the split of their difference."""

    x: Tensor
    x0: Tensor
    dp: Tensor  # dx+ >= 0 contributions
    dn: Tensor  # dx- <= 0 contributions


def deeplift(
    model: nn.Module,
    inputs: Tensor,
    target: int | Sequence[int] | Tensor | None,
    baseline: Tensor | float | None = None,
    rule: str = "rescale",
    eps: float = 1e-10,
) -> Tensor:
    """DeepLIFT attributions of the ``target`` output for each input, by the chosen rule.

    Args:
        model: ``nn.Sequential`` of supported layers, or a VGG-style model (see module docstring).
        inputs: ``[N, ...]`` batch (dim 0 is the batch).
        target: output index per example: an int, a length-``N`` sequence or 1-D tensor; ``None``
            only when the model has a single output.
        baseline: reference input: ``None`` (zeros), a number, or a tensor broadcastable to
            ``inputs`` (e.g. ``[1, ...]`` or one reference per example).
        rule: ``"rescale"`` or ``"reveal_cancel"`` for the nonlinearities.
        eps: a difference smaller than this in absolute value uses the gradient instead of a ratio.

    Returns:
        ``[N, ...]`` attributions shaped like ``inputs``; per example they sum to
        ``f(x)[target] - f(baseline)[target]``.

    Raises:
        ValueError: unknown ``rule``, unsupported layer (named), BatchNorm/Dropout in training
            mode, a model whose output is not ``[N, C]``, a bad ``target`` or ``baseline``.

    Example:
        The paper's ``min(i1, i2) = h2 - h1`` network (``h1 = ReLU(i1 - i2)``, ``h2 = ReLU(i1)``):
        rescale gives the whole difference to the smaller input, reveal-cancel splits it.

        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
        ...     _ = net[2].weight.copy_(torch.tensor([[-1.0, 1.0]]))
        >>> x = torch.tensor([[3.0, 1.0]])
        >>> deeplift(net, x, target=0)
        tensor([[0., 1.]])
        >>> deeplift(net, x, target=0, rule="reveal_cancel")
        tensor([[0.5000, 0.5000]])
    """
    if rule not in RULES:
        raise ValueError(f"Expected argument `rule` to be one of {RULES}, but got {rule!r}.")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"Expected argument `eps` to be a number >= 0, but got {eps!r}.")
    if not isinstance(inputs, Tensor) or inputs.ndim < 1 or not inputs.is_floating_point():
        raise ValueError(f"Expected argument `inputs` to be a floating [N, ...] tensor, but got {inputs!r:.80}.")
    layers = _layers(model)
    reference = _baseline(baseline, inputs)
    with torch.no_grad():
        states = _forward(layers, inputs.detach(), reference, rule, eps)
        out = states[-1]
        if not isinstance(model, nn.Sequential):
            _check_composition(model, inputs, out.x)
        squeeze = out.x.ndim == 1
        x_out = out.x[:, None] if squeeze else out.x
        if x_out.ndim != 2:
            raise ValueError(
                f"Expected the model output to be [N, C], but got shape {tuple(out.x.shape)}; DeepLIFT needs one "
                "scalar per example to attribute."
            )
        onehot = _target_onehot(target, x_out)
        m = onehot.view(out.x.shape) if squeeze else onehot
        mp, mn = m, m.clone()
        for (name, layer), state, nxt in zip(reversed(layers), reversed(states[:-1]), reversed(states[1:])):
            mp, mn = _backward(name, layer, state, nxt, mp, mn, rule, eps)
        first = states[0]
        return mp * first.dp + mn * first.dn


# -- the ``deeplift`` and ``deeplift_rc`` methods of ``attribute`` ------------------------------------------
def deeplift_map(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
                 backend: str = "attrpreserve", internal_batch_size: int | None = None) -> Tensor:
    """DeepLIFT, rescale rule, zero baseline: the ``deeplift`` method of
    :func:`~attrpreserve.attribution.methods.attribute`, ``[N, H, W]`` summed over colour.

    ``backend="attrpreserve"`` (default) is :func:`deeplift`, exact summation-to-delta;
    ``backend="captum"`` is captum's ``DeepLift``
    (:func:`~attrpreserve.attribution.captum_methods.captum_deeplift`).

    Raises:
        ValueError: a layer is given, a bad ``backend`` or ``internal_batch_size``, an unsupported model.
    """
    if backend not in DEEPLIFT_BACKENDS:
        raise ValueError(f"Expected argument `backend` to be one of {DEEPLIFT_BACKENDS}, but got {backend!r}.")
    if backend == "captum":
        from attrpreserve.attribution.captum_methods import captum_deeplift

        _no_layer("deeplift", layer)
        _check_chunk(internal_batch_size)
        return captum_deeplift(model, images[image_index], classes, internal_batch_size)
    return _own_deeplift_map("deeplift", "rescale", model, images, image_index, classes, layer, internal_batch_size)


def deeplift_rc_map(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
                    layer: str | None = None, internal_batch_size: int | None = None) -> Tensor:
    """DeepLIFT with the reveal-cancel rule, zero baseline: the ``deeplift_rc`` method of
    :func:`~attrpreserve.attribution.methods.attribute`, ``[N, H, W]`` summed over colour.

    Raises:
        ValueError: a layer is given, a bad ``internal_batch_size``, an unsupported model.
    """
    return _own_deeplift_map("deeplift_rc", "reveal_cancel", model, images, image_index, classes, layer,
                             internal_batch_size)


def _own_deeplift_map(method: str, rule: str, model: nn.Module, images: Tensor, image_index: Tensor,
                      classes: Tensor, layer: str | None, internal_batch_size: int | None) -> Tensor:
    _no_layer(method, layer)
    _check_chunk(internal_batch_size)

    def one_chunk(x: Tensor, target: Tensor) -> Tensor:
        return deeplift(model, x, target, baseline=None, rule=rule).sum(dim=1)

    return _chunked(one_chunk, images[image_index], classes, internal_batch_size)


# -- model walking --------------------------------------------------------------------------------
def _flatten(prefix: str, seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    for name, module in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            layers.extend(_flatten(full + ".", module))
        else:
            layers.append((full, module))
    return layers


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(dotted name, module)`` in execution order; every module checked to be supported."""
    if isinstance(model, nn.Sequential):
        layers = _flatten("", model)
    elif all(isinstance(getattr(model, a, None), nn.Module) for a in ("features", "avgpool", "classifier")):
        def part(attr: str) -> list[tuple[str, nn.Module]]:
            module = getattr(model, attr)
            return _flatten(attr + ".", module) if isinstance(module, nn.Sequential) else [(attr, module)]

        layers = [*part("features"), *part("avgpool"), ("flatten", nn.Flatten(1)), *part("classifier")]
    else:
        raise ValueError(
            f"Expected argument `model` to be an nn.Sequential or to expose `features`, `avgpool` and `classifier`, "
            f"but got {type(model).__name__}."
        )
    for name, module in layers:
        _check_supported(name, module)
    return layers


def _check_supported(name: str, module: nn.Module) -> None:
    kinds = (*_ELEMENTWISE, *_POSITIVE_LINEAR, *_MAXPOOL, *_CONV, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    if type(module) not in kinds:
        allowed = sorted(k.__name__ for k in kinds)
        raise ValueError(
            f"DeepLIFT does not support layer {name!r} of type {type(module).__name__}; supported: {allowed}."
        )
    if isinstance(module, nn.Dropout) and module.training and module.p > 0:
        raise ValueError(f"Layer {name!r} (Dropout) is in training mode; call model.eval() first.")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and (module.training or module.running_mean is None):
        raise ValueError(
            f"Layer {name!r} ({type(module).__name__}) must use running statistics (eval mode, "
            "track_running_stats=True) to be an affine map; call model.eval() first."
        )
    if isinstance(module, tuple(_CONV)) and module.padding_mode != "zeros":
        raise ValueError(f"Layer {name!r}: only padding_mode='zeros' is supported, got {module.padding_mode!r}.")


def _check_composition(model: nn.Module, inputs: Tensor, composed: Tensor) -> None:
    actual = model(inputs)
    if actual.shape != composed.shape or not torch.allclose(actual, composed, rtol=1e-4, atol=1e-5):
        raise ValueError(
            f"{type(model).__name__}.forward is not classifier(flatten(avgpool(features(x)))); DeepLIFT needs a "
            "Sequential composition."
        )


def _baseline(baseline: Tensor | float | None, inputs: Tensor) -> Tensor:
    if baseline is None:
        return torch.zeros_like(inputs)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(inputs), inputs.shape).clone()
        except RuntimeError:
            pass
    shape = tuple(baseline.shape) if isinstance(baseline, Tensor) else type(baseline).__name__
    raise ValueError(
        f"Expected argument `baseline` to be None, a number or a tensor broadcastable to {tuple(inputs.shape)}, "
        f"but got {shape}."
    )


def _target_onehot(target: int | Sequence[int] | Tensor | None, out: Tensor) -> Tensor:
    n, c = out.shape
    if target is None:
        if c != 1:
            raise ValueError(f"Expected argument `target` for a model with {c} outputs, but got None.")
        idx = torch.zeros(n, dtype=torch.long, device=out.device)
    elif isinstance(target, int) and not isinstance(target, bool):
        idx = torch.full((n,), target, dtype=torch.long, device=out.device)
    else:
        idx = torch.as_tensor(target, device=out.device)
        if idx.ndim == 0:
            idx = idx.expand(n)
        if idx.ndim != 1 or idx.numel() != n or idx.is_floating_point():
            raise ValueError(
                f"Expected argument `target` to be an int or {n} integer indices, but got shape {tuple(idx.shape)}."
            )
        idx = idx.long()
    if bool((idx < 0).any()) or bool((idx >= c).any()):
        raise ValueError(f"Expected argument `target` in [0, {c}), but got {idx.tolist()}.")
    return F.one_hot(idx, c).to(out.dtype)


# -- the two passes -------------------------------------------------------------------------------
def _safe_ratio(num: Tensor, den: Tensor, fallback: Callable[[], Tensor], eps: float) -> Tensor:
    """``num / den``, and ``fallback()`` (computed only if needed) where ``|den| <= eps``."""
    small = den.abs() <= eps
    ratio = num / torch.where(small, torch.ones_like(den), den)
    return torch.where(small, fallback(), ratio) if bool(small.any()) else ratio


def _grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return grad


def _call(module: nn.Module, x: Tensor) -> Tensor:
    # In-place activations would overwrite the recorded input.
    return module(x.clone()) if getattr(module, "inplace", False) else module(x)


def _signed_maps(module: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor] | None]:
    """Bias-free linear maps with the positive and the negative coefficients of ``module``."""
    if isinstance(module, nn.Linear):
        w = module.weight.detach()
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        return (lambda t: F.linear(t, wp)), (lambda t: F.linear(t, wn))
    if isinstance(module, tuple(_CONV)):
        conv = _CONV[type(module)]
        w = module.weight.detach()
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        kw = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation, "groups": module.groups}
        return (lambda t: conv(t, wp, None, **kw)), (lambda t: conv(t, wn, None, **kw))
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach()

        def shaped(s: Tensor) -> Callable[[Tensor], Tensor]:
            return lambda t: s.view(1, -1, *([1] * (t.ndim - 2))) * t

        return shaped(scale.clamp(min=0)), shaped(scale.clamp(max=0))
    return (lambda t: module(t)), None  # average pools, (Un)Flatten, Identity, Dropout(eval)


def _forward(layers: list[tuple[str, nn.Module]], x: Tensor, x0: Tensor, rule: str, eps: float) -> list[_State]:
    delta = x - x0
    states = [_State(x, x0, delta.clamp(min=0), delta.clamp(max=0))]
    for _, layer in layers:
        s = states[-1]
        y, y0 = _call(layer, s.x), _call(layer, s.x0)
        if isinstance(layer, _ELEMENTWISE):
            if rule == "rescale":
                ratio = _safe_ratio(y - y0, s.x - s.x0, lambda: _grad(layer, s.x), eps)
                dp, dn = ratio * s.dp, ratio * s.dn
            else:
                dp, dn = _reveal_cancel(layer, s)
        elif type(layer) in _MAXPOOL:
            d = y - y0
            dp, dn = d.clamp(min=0), d.clamp(max=0)
        else:
            pos, neg = _signed_maps(layer)
            if neg is None:
                dp, dn = pos(s.dp), pos(s.dn)
            else:
                dp, dn = pos(s.dp) + neg(s.dn), neg(s.dp) + pos(s.dn)
        states.append(_State(y, y0, dp, dn))
    return states


def _reveal_cancel(f: nn.Module, s: _State) -> tuple[Tensor, Tensor]:
    base = _call(f, s.x0)
    with_p, with_n, with_both = _call(f, s.x0 + s.dp), _call(f, s.x0 + s.dn), _call(f, s.x0 + s.dp + s.dn)
    dp = 0.5 * (with_p - base) + 0.5 * (with_both - with_n)
    dn = 0.5 * (with_n - base) + 0.5 * (with_both - with_p)
    return dp, dn


def _backward(
    name: str, layer: nn.Module, s: _State, out: _State, mp: Tensor, mn: Tensor, rule: str, eps: float
) -> tuple[Tensor, Tensor]:
    """Multipliers ``(m+, m-)`` at the input of ``layer`` from those at its output."""
    if isinstance(layer, _ELEMENTWISE):
        def grad() -> Tensor:
            return _grad(layer, s.x)

        if rule == "rescale":
            ratio = _safe_ratio(out.x - out.x0, s.x - s.x0, grad, eps)
            return mp * ratio, mn * ratio
        return mp * _safe_ratio(out.dp, s.dp, grad, eps), mn * _safe_ratio(out.dn, s.dn, grad, eps)
    if type(layer) in _MAXPOOL:
        m = _maxpool_multiplier(layer, s, out, mp, mn, eps)
        return m, m.clone()
    pos, neg = _signed_maps(layer)
    with torch.enable_grad():
        a = s.dp.detach().requires_grad_(True)
        b = s.dn.detach().requires_grad_(True)
        if neg is None:
            gp, gn = torch.autograd.grad([pos(a), pos(b)], [a, b], [mp, mn])
        else:
            gp, gn = torch.autograd.grad([pos(a) + neg(b), neg(a) + pos(b)], [a, b], [mp, mn])
    return gp, gn


def _maxpool_multiplier(layer: nn.Module, s: _State, out: _State, mp: Tensor, mn: Tensor, eps: float) -> Tensor:
    pool = _MAXPOOL[type(layer)]
    kw = {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding,
          "dilation": layer.dilation, "ceil_mode": layer.ceil_mode, "return_indices": True}
    _, idx_x = pool(s.x, **kw)
    _, idx_0 = pool(s.x0, **kw)
    d_out = out.x - out.x0
    # Route dy to the arg-max of the side (input or reference) with the larger window maximum.
    idx = torch.where(out.x >= out.x0, idx_x, idx_0).flatten(2)
    contrib = (torch.where(d_out > 0, mp, mn) * d_out).flatten(2)
    n, c = s.x.shape[:2]
    routed = torch.zeros(n, c, s.x[0, 0].numel(), dtype=s.x.dtype, device=s.x.device)
    routed.scatter_add_(2, idx, contrib)
    # Fallback where dx ~ 0 (then dy ~ 0 too): the gradient of the max, routed to the input's arg-max.
    def grad() -> Tensor:
        return torch.zeros_like(routed).scatter_add_(2, idx_x.flatten(2), torch.where(d_out > 0, mp, mn).flatten(2))

    delta = (s.x - s.x0).flatten(2)
    return _safe_ratio(routed, delta, grad, eps).view_as(s.x)


__all__ = ["DEEPLIFT_BACKENDS", "RULES", "deeplift", "deeplift_map", "deeplift_rc_map"]
