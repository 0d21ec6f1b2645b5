"""Relative Attributing Propagation (RAP; Nam, Gur, Choi, Wolf, Lee, AAAI 2020) for VGG-style chains.

RAP propagates the target logit back to the input layer by layer, separating what pushes a unit
up from what pushes it down. Written here from the paper and the authors' reference code
(``wjNam/Relative_Attributing_Propagation``, ``modules/layers.py``), rule by rule:

- **output layer** (the last ``Linear``, target row ``w``, bias ``b``): each input's contribution
  ``x_i w_i``; the bias is split between the positive contributions (``x+ w+ + x- w-``, total P)
  and the negative ones (total Q) in proportion ``P : Q`` and handed to the ``x+ w+`` and
  ``x+ w-`` terms in proportion to their size. The result ``r`` (summing to the logit) is then made
  *relative*: ``R_i = |r_i| * sum(r) / sum(|r|)``, so every unit gets the logit's sign and its
  share of influence.
- **hidden Linear / Conv2d** (input ``x``, relevance ``R`` at the output): for each sign part of
  the input (``x+``; ``x-`` only where inputs are negative) the pre-activation splits into the
  magnitudes ``A`` (contributions that agree with the part: ``x+ w+``) and ``B`` (those that
  oppose it: ``-x+ w-``), restricted to outputs with ``R != 0``. Positive relevance goes fully
  over the ``A`` terms and by ``B / (A + B)`` over the ``B`` terms; negative relevance the same
  way (the authors send it through ``A`` for Linear and through ``B`` for Conv2d layers; kept).
  The surplus over ``sum(R)`` is then subtracted evenly from every non-zero input relevance, so
  the layer conserves relevance and negative relevance appears where a unit mattered little.
  Biases of hidden layers get no relevance (as the reference code).
- **input layer** (the first Linear / Conv2d): the z^B rule with the bounds ``L``/``H`` = the
  minimum/maximum of the whole input of each example.
- **pooling** (max, average, adaptive average): relevance to the inputs in proportion to their
  part of each output (max: all to the maximum).
- **BatchNorm**, **ReLU**, **Dropout**, **Flatten**, **Identity**: relevance passes unchanged
  (BatchNorm: except where its input is 0, as the reference).

Conservation: the input relevance sums to the target logit (exactly, up to rounding, when every
hidden layer's inputs are non-negative, as after ReLU/max-pool in VGG, and not all zero: a layer
whose inputs are all 0 leaves only biases above it, which RAP does not place). The model must
be a chain: its leaf modules, in registration order, run once each in that order and each feeds
the next (``torch.flatten`` between them is allowed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrpreserve.attribution.registry import _check_chunk, _chunked, _no_layer

_PASS = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_WEIGHTED = (nn.Linear, nn.Conv2d)


def _divide(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` where ``b != 0``, else 0."""
    nonzero = b != 0
    return torch.where(nonzero, a / torch.where(nonzero, b, torch.ones_like(b)), torch.zeros_like(a))


def _sum(x: Tensor) -> Tensor:
    """Sum over every dim but the batch, kept for broadcasting."""
    return x.sum(dim=tuple(range(1, x.ndim)), keepdim=True)


# -- the forward trace --------------------------------------------------------------------------------
def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    for name, module in leaves:
        if not isinstance(module, (*_PASS, *_POOLS, *_NORMS, *_WEIGHTED)):
            raise ValueError(f"Method 'rap' supports VGG-style chains of Conv2d/Linear, BatchNorm, ReLU, pooling, "
                             f"Dropout and Flatten modules, but module {name!r} is a {type(module).__name__}.")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"Method 'rap' needs zero-padded convolutions, but {name!r} uses "
                             f"padding_mode={module.padding_mode!r}.")
    if not leaves or not isinstance(leaves[-1][1], nn.Linear):
        raise ValueError(f"Method 'rap' needs a model whose last module is the Linear layer giving the logits, but "
                         f"{type(model).__name__} ends with {type(leaves[-1][1]).__name__ if leaves else 'nothing'}.")
    return leaves


def _trace(model: nn.Module, inputs: Tensor) -> tuple[list[tuple[nn.Module, Tensor, torch.Size]], Tensor]:
    """Run the model once, recording each leaf's input and output shape; check it is a chain."""
    leaves = _leaves(model)
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            calls.append((name, module, args[0].detach(), output))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    names = [n for n, _ in leaves]
    if [c[0] for c in calls] != names:
        raise ValueError(f"Method 'rap' needs each module to run once, in registration order; "
                         f"{type(model).__name__} ran {[c[0] for c in calls][:8]}..., registered {names[:8]}....")
    for (name, _, _, out), (following, _, x, _) in zip(calls, calls[1:]):
        if out.numel() != x.numel() or (out.data_ptr() != x.data_ptr()
                                         and not torch.equal(out.reshape(-1), x.reshape(-1))):
            raise ValueError(f"Method 'rap' needs a chain, but the input of {following!r} is not the output of "
                             f"{name!r} (a skip connection or a function between modules).")
    return [(m, x, out.shape) for _, m, x, out in calls], logits


# -- rules --------------------------------------------------------------------------------------------
def _layer_fn(module: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """The layer's map without bias: ``(x, weight) -> z``."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    return lambda x, w: F.conv2d(x, w, None, module.stride, module.padding, module.dilation, module.groups)


def _transpose(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, w: Tensor, s: Tensor) -> Tensor:
    """``d <fn(x, w), s> / dx``: the transposed layer applied to ``s``."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf, w), leaf, s)
    return grad


def _output_layer(module: nn.Linear, x: Tensor, classes: Tensor) -> Tensor:
    """Relevance of the output layer's inputs ``[N, D]`` for the target rows."""
    w = module.weight[classes]
    b = module.bias[classes][:, None] if module.bias is not None else torch.zeros_like(x[:, :1])
    px, nx, pw, nw = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    pp, pn, np_, nn_ = px * pw, px * nw, nx * pw, nx * nw
    agree, oppose = _sum(pp + nn_), _sum(pn + np_)
    bias_agree, bias_oppose = _divide(b * agree, agree + oppose), _divide(b * oppose, agree + oppose)
    r = pp + pn + np_ + nn_ + pp * _divide(bias_agree, _sum(pp)) + pn * _divide(bias_oppose, _sum(pn))
    return r.abs() * _divide(_sum(r), _sum(r.abs()))


def _relative(module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    """A hidden Linear/Conv2d: relevance of its input (see the module docstring)."""
    fn, w = _layer_fn(module), module.weight
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    live = (relevance != 0).to(relevance.dtype)
    positive, negative = relevance.clamp(min=0), relevance.clamp(max=0)
    out = torch.zeros_like(x)
    for part, (w_a, sign_a), (w_b, sign_b) in ((x.clamp(min=0), (pw, 1.0), (nw, -1.0)),
                                              (x.clamp(max=0), (nw, 1.0), (pw, -1.0))):
        if not bool(part.any()):
            continue
        a = sign_a * fn(part, w_a) * live
        b = sign_b * fn(part, w_b) * live
        share_b = _divide(b, a + b)
        through_a = _divide(positive * (a + b != 0), a)
        through_b = _divide((positive + negative) * share_b, b)
        if isinstance(module, nn.Linear):
            through_a = through_a + _divide(negative * (a + b != 0), a)
        else:
            through_b = through_b + _divide(negative * (a + b != 0), b)
        c = part * (sign_a * _transpose(fn, part, w_a, through_a) + sign_b * _transpose(fn, part, w_b, through_b))
        nonzero = (c != 0).to(c.dtype)
        out = out + c - _divide(_sum(c) - _sum(relevance), _sum(nonzero)) * nonzero
    return out


def _input_layer(module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    """The z^B rule, bounds = each example's input minimum and maximum."""
    fn, w = _layer_fn(module), module.weight
    pw, nw = w.clamp(min=0), w.clamp(max=0)
    dims = tuple(range(1, x.ndim))
    low = x.amin(dim=dims, keepdim=True).expand_as(x)
    high = x.amax(dim=dims, keepdim=True).expand_as(x)
    s = _divide(relevance, fn(x, w) - fn(low, pw) - fn(high, nw))
    return x * _transpose(fn, x, w, s) - low * _transpose(fn, low, pw, s) - high * _transpose(fn, high, nw, s)


def _pool(module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = module(leaf)
        (grad,) = torch.autograd.grad(z, leaf, _divide(relevance, z.detach()))
    return x * grad


def _norm(module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    scale = module.weight if module.weight is not None else torch.ones(x.shape[1], device=x.device)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return relevance * (x * scale.view(shape) != 0)


def rap(model: nn.Module, inputs: Tensor, classes: Tensor) -> Tensor:
    """RAP relevance of each input element for the logit of ``classes``.

    Args:
        model: a chain of Conv2d/Linear, BatchNorm, ReLU, pooling, Dropout and Flatten modules
            (e.g. :class:`attrpreserve.models.VGG`), in eval mode, ending with the logits' Linear.
        inputs: ``[N, ...]`` one input per pair.
        classes: long ``[N]`` target classes.

    Returns:
        ``[N, ...]`` relevance shaped like ``inputs``, summing per example to the target logit.

    Raises:
        ValueError: an unsupported module, a model that is not a chain, or a last module that is
            not a Linear.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]])), net[0].bias.zero_()
        ...     _ = net[2].weight.copy_(torch.tensor([[2.0, 1.0]])), net[2].bias.fill_(-1.0)
        >>> relevance = rap(net, torch.tensor([[3.0, 1.0]]), torch.tensor([0]))
        >>> relevance * 11  # [90, 20] / 11, summing to the logit 10
        tensor([[90.0000, 20.0000]])
    """
    trace, _ = _trace(model, inputs)
    first = next(i for i, (m, _, _) in enumerate(trace) if isinstance(m, _WEIGHTED))
    module, x, _ = trace[-1]
    relevance = _output_layer(module, x.flatten(1), classes).reshape(x.shape)
    for index in range(len(trace) - 2, -1, -1):
        module, x, out_shape = trace[index]
        relevance = relevance.reshape(out_shape)
        if index == first:
            relevance = _input_layer(module, x, relevance)
        elif isinstance(module, _WEIGHTED):
            relevance = _relative(module, x, relevance)
        elif isinstance(module, _POOLS):
            relevance = _pool(module, x, relevance)
        elif isinstance(module, _NORMS):
            relevance = _norm(module, x, relevance)
    return relevance.reshape(inputs.shape)


def rap_map(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
            internal_batch_size: int | None = None) -> Tensor:
    """The ``rap`` method of :func:`~attrpreserve.attribution.methods.attribute`: input relevance
    summed over colour channels, ``[N, H, W]``, ``internal_batch_size`` pairs per pass.

    Raises:
        ValueError: a layer is given, a bad ``internal_batch_size``, or a model :func:`rap` rejects.
    """
    _no_layer("rap", layer)
    _check_chunk(internal_batch_size)
    # chunk the pair indices, so only one chunk of repeated images exists at a time
    return _chunked(lambda index, target: rap(model, images[index], target).sum(dim=1), image_index, classes,
                    internal_batch_size)


__all__ = ["rap", "rap_map"]
