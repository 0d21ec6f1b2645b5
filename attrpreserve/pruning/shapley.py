"""Shapley link and unit importance of Linear/Conv2d layers, and pruning by it (SHAP-SAE).

Rhee and Park, "Lightweighted Sparse Autoencoder based on Explainable Contribution": the link
from unit ``j`` of layer ``l-1`` to unit ``i`` of layer ``l`` is a player in a cooperative game
whose value is unit ``i``'s output; its Shapley value ``phi_ij`` is the link's contribution.

* **Players and value.** For one example, link ``(i, j)`` brings ``c_ij = w_ij * (x_j - b_j)``,
  where ``b`` is a baseline input (a link that is absent carries the baseline). The coalition
  ``S`` of links into unit ``i`` has value ``v(S) = act(z0_i + sum_{j in S} c_ij)`` with
  ``z0_i = bias_i + sum_j w_ij * b_j``, so the full coalition gives the unit's actual output.
* ``output="pre"`` (default: exact and cheap): ``act`` is the identity, the game is additive and
  ``phi_ij = c_ij`` exactly (with ``b = E[x]`` this is Lundberg and Lee's linear SHAP).
* ``output="post"``: ``act`` is the activation (ReLU by default); ``phi`` is estimated by
  permutation sampling. Each sampled marginal contribution ``act(a + c_ij) - act(a)`` of a
  monotone 1-Lipschitz activation lies in an interval of length ``|c_ij|``, so the mean of ``n``
  permutations has standard deviation at most ``|c_ij| / (2 sqrt(n))`` (Popoviciu) and, by
  Hoeffding, ``P(|estimate - phi| >= t) <= 2 exp(-2 n t^2 / c_ij^2)``. The returned ``error`` is
  the first bound, averaged over the data the same way as ``phi``: it bounds the expected absolute
  error of the reported importance.
* **Importance over data** is the mean absolute Shapley value ``mean_x |phi_ij(x)|``, not
  ``|mean_x phi_ij(x)|``: with the mean baseline the signed values of a linear layer average to
  exactly zero, and a link that pushes some examples up and others down is important.
* **Baseline** ``"mean"`` (default): the data mean of the layer input, accumulated in float64 so a
  constant input unit gets importance exactly 0 (it carries no information; its effect is a
  bias). ``"zero"``: ``b = 0`` (absent links contribute nothing), or a tensor of input units.
* **Conv2d**: each kernel weight ``w[o, c, kh, kw]`` is a link of the unfolded input; at every
  output position its contribution is ``w * (patch - b_c)`` (padding is "absent": contributes 0);
  ``phi`` averages ``|.|`` over positions and data. The baseline is per input channel.
* **Unit importance** of input unit ``j`` (an input channel for Conv2d): the mean over ``i`` (and
  kernel positions) of the link importances.
* **Sparsification** per layer: keep the smallest set of links, by decreasing importance, whose
  importance sums to at least ``m`` times the layer total (``0 < m <= 1``); the rest are masked
  with ``torch.nn.utils.prune.custom_from_mask`` so they stay zero through training. A layer whose
  links all have importance 0 is pruned entirely.

Weights are read as the module's effective ``weight`` (a pruned module's masked weight).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from attrpreserve.pruning.targets import batch_images

OUTPUTS = ("pre", "post")
BASELINES = ("mean", "zero")
_CHUNK = 1 << 22  # elements per intermediate tensor when sampling / unfolding


class LinkImportance(NamedTuple):
    """Importance of every link of a layer, shaped like its weight.

    Attributes:
        phi: mean over the data of ``|Shapley value|`` per link.
        error: bound on the expected absolute error of ``phi`` from permutation sampling
            (zeros for ``output="pre"``, which is exact).
    """

    phi: Tensor
    error: Tensor


class ShapleyValues(NamedTuple):
    """Signed per-example Shapley values of a layer's links.

    Attributes:
        values: ``[S, *weight.shape]``: ``S = N`` examples for Linear, ``N * L`` (example-major,
            then output positions) for Conv2d.
        error: same shape: bound on the standard deviation of each estimate (0 when exact).
    """

    values: Tensor
    error: Tensor


@dataclass(frozen=True)
class ShapleyReport:
    """What :func:`prune_by_importance` did.

    Attributes:
        layers: layer name -> ``(kept links, all links)``.
        sparsity: eta, pruned links / all links over all the layers.
    """

    layers: dict[str, tuple[int, int]]
    sparsity: float


# -- argument checks ------------------------------------------------------------------------------
def _check_layer(layer: nn.Module, name: str = "layer") -> None:
    """Raise ``ValueError`` unless ``layer`` is a Linear or a (groups=1, zero-padded) Conv2d."""
    if isinstance(layer, nn.Linear):
        return
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"Expected argument `{name}` to be a Conv2d with groups=1, but got groups={layer.groups}.")
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"Expected argument `{name}` to be a Conv2d with padding_mode='zeros', but got {layer.padding_mode!r}."
            )
        _conv_padding(layer)
        return
    raise ValueError(f"Expected argument `{name}` to be an nn.Linear or nn.Conv2d, but got {type(layer).__name__}.")


def _check_common(output: str, num_permutations: int, baseline: Any) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"Expected argument `output` to be one of {OUTPUTS}, but got {output!r}.")
    if not isinstance(num_permutations, int) or isinstance(num_permutations, bool) or num_permutations < 1:
        raise ValueError(f"Expected argument `num_permutations` to be an int >= 1, but got {num_permutations!r}.")
    if not (isinstance(baseline, Tensor) or baseline in BASELINES):
        raise ValueError(f"Expected argument `baseline` to be one of {BASELINES} or a tensor, but got {baseline!r}.")


def check_importance_level(importance_level: Any) -> float:
    """Return ``importance_level`` as a float, or raise ``ValueError`` unless it is in (0, 1].

    Example:
        >>> check_importance_level(1)
        1.0
    """
    if isinstance(importance_level, bool) or not isinstance(importance_level, (int, float)) or not (
        0.0 < importance_level <= 1.0
    ):
        raise ValueError(f"Expected argument `importance_level` to be in (0, 1], but got {importance_level!r}.")
    return float(importance_level)


# -- layer geometry -------------------------------------------------------------------------------
def _conv_padding(layer: nn.Conv2d) -> tuple[int, int]:
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        if any(t % 2 for t in totals):
            raise ValueError("Expected argument `layer` to have symmetric padding; padding='same' is asymmetric here.")
        return (totals[0] // 2, totals[1] // 2)
    return tuple(layer.padding)  # type: ignore[return-value]


def _num_inputs(layer: nn.Module) -> int:
    """Input units: features for Linear, channels for Conv2d."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _shift(layer: nn.Module, x: Tensor, baseline: Tensor) -> Tensor:
    shape = (1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else (-1,)
    return x - baseline.to(x).view(shape)


def _link_inputs(layer: nn.Module, shifted: Tensor) -> Tensor:
    """``[S, K]``: the value each link carries (``x - b``, unfolded for Conv2d)."""
    if isinstance(layer, nn.Linear):
        return shifted.reshape(-1, layer.in_features)
    cols = F.unfold(shifted, layer.kernel_size, layer.dilation, _conv_padding(layer), layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _pre_activation(layer: nn.Module, x: Tensor) -> Tensor:
    """``[S, O]`` pre-activation outputs in the sample order of :func:`_link_inputs`."""
    out = layer(x)
    if isinstance(layer, nn.Linear):
        return out.reshape(-1, layer.out_features)
    return out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1])


def _weight_matrix(layer: nn.Module) -> Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def _chunks(x: Tensor, per_example: int) -> Iterable[Tensor]:
    step = max(1, _CHUNK // max(per_example, 1))
    return x.split(step) if x.ndim > 0 and x.shape[0] > step else (x,)


# -- Shapley values -------------------------------------------------------------------------------
def _permutation_shapley(
    contrib: Tensor, z0: Tensor, activation: Callable[[Tensor], Tensor], num_permutations: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``[S, O, K]`` Shapley estimates of the game ``v(T) = act(z0 + sum_{k in T} contrib_k)``."""
    s, o, k = contrib.shape
    keys = torch.rand(num_permutations, k, generator=generator)
    perms = keys.argsort(dim=1).to(contrib.device)
    out = torch.empty_like(contrib)
    step = max(1, _CHUNK // max(o * num_permutations * k, 1))
    for start in range(0, s, step):
        c = contrib[start : start + step]
        permuted = c[:, :, perms]  # [s, O, P, K] contributions in permutation order
        after = z0[start : start + step, :, None, None] + permuted.cumsum(-1)
        marginal = activation(after) - activation(after - permuted)
        values = torch.zeros_like(marginal).scatter_(-1, perms.expand_as(marginal), marginal)
        out[start : start + step] = values.mean(2)
    return out


def link_shapley(
    layer: nn.Module,
    x: Tensor,
    baseline: Tensor | None = None,
    output: str = "pre",
    num_permutations: int = 128,
    generator: torch.Generator | None = None,
    activation: Callable[[Tensor], Tensor] = torch.relu,
) -> ShapleyValues:
    """Signed Shapley value of every link of ``layer`` for every example (and position) of ``x``.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv2d``.
        x: layer input, ``[N, in_features]`` or ``[N, C, H, W]``.
        baseline: value of an absent link's input unit, ``[in_features]`` or ``[C]``; ``None``: 0.
        output: ``"pre"`` (exact ``w * (x - b)``) or ``"post"`` (``activation`` applied, sampled).
        num_permutations: permutations sampled per example for ``"post"``.
        generator: random generator for the permutations.
        activation: monotone 1-Lipschitz function for ``"post"`` (the error bound assumes it).

    Returns:
        :class:`ShapleyValues` with ``values`` and ``error`` shaped ``[S, *layer.weight.shape]``.

    Raises:
        ValueError: unsupported layer, bad ``output``/``num_permutations``, baseline shape.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[2.0, -1.0]])); _ = layer.bias.fill_(-1.0)
        >>> link_shapley(layer, torch.tensor([[1.0, 3.0]])).values
        tensor([[[ 2., -3.]]])
    """
    _check_layer(layer)
    _check_common(output, num_permutations, "zero" if baseline is None else baseline)
    base = _resolve_baseline_tensor(layer, baseline, x)
    with torch.no_grad():
        inputs = _link_inputs(layer, _shift(layer, x, base))
        weight = _weight_matrix(layer)
        contrib = weight[None] * inputs[:, None, :]  # [S, O, K]
        if output == "pre":
            values, error = contrib, torch.zeros_like(contrib)
        else:
            z0 = _pre_activation(layer, x) - contrib.sum(-1)
            values = _permutation_shapley(contrib, z0, activation, num_permutations, generator)
            error = contrib.abs() / (2 * math.sqrt(num_permutations))
    shape = (values.shape[0], *layer.weight.shape)
    return ShapleyValues(values.reshape(shape), error.reshape(shape))


# -- accumulation over data -----------------------------------------------------------------------
def _resolve_baseline_tensor(layer: nn.Module, baseline: Tensor | None, like: Tensor) -> Tensor:
    n = _num_inputs(layer)
    if baseline is None:
        return torch.zeros(n, dtype=like.dtype, device=like.device)
    if baseline.numel() != n:
        raise ValueError(
            f"Expected argument `baseline` to have one value per input unit ({n}), "
            f"but got shape {tuple(baseline.shape)}."
        )
    return baseline.reshape(n).to(like)


class _MeanAccumulator:
    """Float64 running mean of a layer's input per input unit (channel for Conv2d)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.total: Tensor | None = None
        self.count = 0

    def update(self, x: Tensor) -> None:
        x = x.detach().double()
        if isinstance(self.layer, nn.Conv2d):
            s, count = x.sum(dim=(0, 2, 3)), x.shape[0] * x.shape[2] * x.shape[3]
        else:
            flat = x.reshape(-1, self.layer.in_features)
            s, count = flat.sum(0), flat.shape[0]
        self.total = s if self.total is None else self.total + s
        self.count += count

    def compute(self) -> Tensor:
        if self.total is None:
            raise ValueError("Expected at least one batch of data, but got none.")
        return self.total / self.count


class _ImportanceAccumulator:
    """Sums of ``|phi|`` (and of the error bound) per link over the examples seen."""

    def __init__(
        self, layer: nn.Module, output: str, baseline: Tensor | str, num_permutations: int,
        generator: torch.Generator | None, activation: Callable[[Tensor], Tensor],
    ) -> None:
        self.layer, self.output, self.baseline = layer, output, baseline
        self.num_permutations, self.generator, self.activation = num_permutations, generator, activation
        self.sum_abs: Tensor | None = None
        self.sum_err: Tensor | None = None
        self.count = 0

    def update(self, x: Tensor) -> None:
        x = x.detach()
        base = None if isinstance(self.baseline, str) else self.baseline
        base = _resolve_baseline_tensor(self.layer, base, x)
        # Elements per example of the largest intermediate: unfolded patches (times outputs for "post").
        per_example = x[0].numel()
        if isinstance(self.layer, nn.Conv2d):
            per_example *= math.prod(self.layer.kernel_size)
        if self.output == "post":
            per_example *= self.layer.weight.shape[0]
        for part in _chunks(x, per_example):
            self._update(part, base)

    def _update(self, x: Tensor, base: Tensor) -> None:
        if self.output == "pre":
            # |w * (x - b)| = |w| * |x - b|: only the per-input sum is needed.
            inputs = _link_inputs(self.layer, _shift(self.layer, x, base))
            add_abs = inputs.abs().double().sum(0)[None, :]
            add_err = torch.zeros_like(add_abs)
            count = inputs.shape[0]
        else:
            est = link_shapley(self.layer, x, base, "post", self.num_permutations, self.generator, self.activation)
            values = est.values.flatten(2)
            add_abs = values.abs().double().sum(0)
            add_err = est.error.flatten(2).double().sum(0)
            count = values.shape[0]
        self.sum_abs = add_abs if self.sum_abs is None else self.sum_abs + add_abs
        self.sum_err = add_err if self.sum_err is None else self.sum_err + add_err
        self.count += count

    def compute(self) -> LinkImportance:
        if self.sum_abs is None or self.sum_err is None:
            raise ValueError("Expected at least one batch of data, but got none.")
        weight = self.layer.weight.detach()
        mean_abs, mean_err = self.sum_abs / self.count, self.sum_err / self.count
        if self.output == "pre":
            w = _weight_matrix(self.layer).abs().double()
            mean_abs, mean_err = w * mean_abs, w * mean_err
        return LinkImportance(mean_abs.to(weight.dtype).view_as(weight), mean_err.to(weight.dtype).view_as(weight))


def _batches(inputs: Tensor | Iterable[Tensor], num_batches: int | None = None) -> list[Any]:
    if isinstance(inputs, Tensor):
        return [inputs]
    return list(itertools.islice(iter(inputs), num_batches))


def link_importance(
    layer: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    output: str = "pre",
    num_permutations: int = 128,
    generator: torch.Generator | None = None,
    baseline: str | Tensor = "mean",
    activation: Callable[[Tensor], Tensor] = torch.relu,
) -> LinkImportance:
    """Mean absolute Shapley value of every link of ``layer`` over ``inputs``.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv2d`` (effective, possibly pruned, weight).
        inputs: the layer's inputs: one tensor ``[N, in]`` / ``[N, C, H, W]`` or an iterable of
            batches of them (tensors, dicts with ``"image"`` or tuples ``(x, ...)``, e.g. a DataLoader).
        output: ``"pre"`` (default; exact) or ``"post"`` (after ``activation``; permutation sampling).
        num_permutations: permutations per example for ``"post"``.
        generator: random generator for the permutations.
        baseline: ``"mean"`` (data mean of each input unit; default), ``"zero"``, or a tensor.
        activation: monotone 1-Lipschitz activation for ``"post"``.

    Returns:
        :class:`LinkImportance` ``(phi, error)``, each shaped like ``layer.weight``.

    Raises:
        ValueError: unsupported layer, bad ``output``, ``num_permutations`` or ``baseline``, no data.

    Example:
        A constant input unit has importance exactly 0 with the mean baseline:

        >>> layer = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, 3.0]]))
        >>> x = torch.tensor([[0.7, 1.0], [0.7, -1.0]])
        >>> link_importance(layer, x).phi
        tensor([[0., 3.]])
        >>> link_importance(layer, x, baseline="zero").phi
        tensor([[0.7000, 3.0000]])
    """
    _check_layer(layer)
    _check_common(output, num_permutations, baseline)
    batches = [batch_images(b) for b in _batches(inputs)]
    with torch.no_grad():
        if isinstance(baseline, str) and baseline == "mean":
            means = _MeanAccumulator(layer)
            for x in batches:
                means.update(x)
            baseline = means.compute()
        acc = _ImportanceAccumulator(layer, output, baseline, num_permutations, generator, activation)
        for x in batches:
            acc.update(x)
        return acc.compute()


def unit_importance(
    layer: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    output: str = "pre",
    num_permutations: int = 128,
    generator: torch.Generator | None = None,
    baseline: str | Tensor = "mean",
    activation: Callable[[Tensor], Tensor] = torch.relu,
) -> Tensor:
    """Importance of each input unit of ``layer``: mean over output units of its links' importance.

    Args: as :func:`link_importance`.

    Returns:
        ``[in_features]`` for Linear, ``[in_channels]`` for Conv2d (also averaged over the kernel).

    Raises:
        ValueError: as :func:`link_importance`.

    Example:
        >>> layer = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[1.0, 3.0], [-1.0, 1.0]]))
        >>> unit_importance(layer, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
        tensor([1., 2.])
    """
    phi = link_importance(layer, inputs, output, num_permutations, generator, baseline, activation).phi
    return phi.mean(dim=(0, 2, 3)) if phi.ndim == 4 else phi.mean(dim=0)


def importance_mask(phi: Tensor, importance_level: float) -> Tensor:
    """Keep-mask of the smallest set of links whose importance reaches ``importance_level`` of the total.

    Links are taken by decreasing ``|phi|`` (ties in index order) until their sum is at least
    ``importance_level * sum(|phi|)``.

    Args:
        phi: link importances, any shape.
        importance_level: ``m`` in (0, 1].

    Returns:
        Boolean tensor shaped like ``phi``: True = keep.

    Raises:
        ValueError: ``importance_level`` outside (0, 1].

    Example:
        >>> importance_mask(torch.tensor([[1.0, 4.0], [3.0, 2.0]]), 0.7)
        tensor([[False,  True],
                [ True, False]])
    """
    m = check_importance_level(importance_level)
    flat = phi.detach().abs().flatten().double()
    order = torch.sort(flat, descending=True, stable=True).indices
    cumulative = flat[order].cumsum(0)
    total = cumulative[-1] if cumulative.numel() else flat.new_zeros(())
    # Number of links strictly below the target, plus the one that reaches it.
    keep = int((cumulative < m * total).sum()) + (1 if total > 0 else 0)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask.view(phi.shape)


# -- whole models ---------------------------------------------------------------------------------
def shapley_layers(model: nn.Module) -> list[str]:
    """Dotted names of the Linear and Conv2d modules of ``model`` whose links Shapley importance
    supports (the default layers of :func:`resolve_layers`).

    Grouped or non-zero-padded convolutions are left out (their links are not supported). Not to
    be confused with :func:`attrpreserve.pruning.prunable_layers`, the ``(name, layer)`` pairs
    magnitude pruning acts on.

    Example:
        >>> shapley_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
        ['0', '2']
    """
    names = []
    for name, module in model.named_modules():
        if name and isinstance(module, (nn.Linear, nn.Conv2d)):
            try:
                _check_layer(module)
            except ValueError:
                continue
            names.append(name)
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Check ``layers`` (``None``: all of :func:`shapley_layers`) against ``model``.

    Raises:
        ValueError: a name that is not a Linear/Conv2d of ``model``; the message lists the valid ones.

    Example:
        >>> resolve_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), ["1"])
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `layers` to name Linear/Conv2d modules ['0'], but got ['1'].
    """
    valid = shapley_layers(model)
    if layers is None:
        if not valid:
            raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to prune.")
        return valid
    unknown = [name for name in layers if name not in valid]
    if unknown or not layers:
        raise ValueError(f"Expected argument `layers` to name Linear/Conv2d modules {valid}, but got {list(layers)!r}.")
    return list(layers)


def model_link_importance(
    model: nn.Module,
    data: Tensor | Iterable[Any],
    layers: Sequence[str] | None = None,
    output: str = "pre",
    num_batches: int | None = None,
    num_permutations: int = 128,
    generator: torch.Generator | None = None,
    baseline: str = "mean",
    activation: Callable[[Tensor], Tensor] = torch.relu,
) -> dict[str, LinkImportance]:
    """Link importance of each layer of ``model`` from its inputs while ``model`` runs on ``data``.

    The model runs in eval mode under ``no_grad`` (every module's mode is restored afterwards),
    twice per batch with the mean baseline (means first). The batches are held in memory.

    Args:
        model: network containing the layers.
        data: a tensor (one batch) or an iterable of batches (tensors, dicts with ``"image"``,
            tuples ``(x, ...)``), e.g. a DataLoader.
        layers: dotted names of Linear/Conv2d modules; ``None``: all of them.
        output, num_permutations, generator, activation: as :func:`link_importance`.
        num_batches: use at most this many batches (``None``: all).
        baseline: ``"mean"`` (per layer input unit) or ``"zero"``.

    Returns:
        Layer name -> :class:`LinkImportance`.

    Raises:
        ValueError: bad layer names, arguments or empty ``data``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)); _ = net[2].weight.fill_(2.0)
        >>> x = torch.tensor([[1.0, 3.0], [3.0, 3.0]])  # unit 1 is constant
        >>> {name: li.phi for name, li in model_link_importance(net, [x]).items()}
        {'0': tensor([[1., 0.],
                [0., 0.]]), '2': tensor([[2., 0.]])}
    """
    _check_common(output, num_permutations, baseline)
    if isinstance(baseline, Tensor):
        raise ValueError("Expected argument `baseline` to be 'mean' or 'zero' for a whole model, but got a tensor.")
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"Expected argument `num_batches` to be None or an int >= 1, but got {num_batches!r}.")
    names = resolve_layers(model, layers)
    modules = {name: model.get_submodule(name) for name in names}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    inputs = [batch_images(b) for b in _batches(data, num_batches)]
    if not inputs:
        raise ValueError("Expected argument `data` to hold at least one batch, but got none.")

    def run(accumulators: Mapping[str, Any]) -> None:
        handles = [
            modules[name].register_forward_pre_hook(lambda _m, args, acc=acc: acc.update(args[0]))
            for name, acc in accumulators.items()
        ]
        try:
            for x in inputs:
                model(x.to(device))
        finally:
            for handle in handles:
                handle.remove()

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            baselines: dict[str, Any] = {name: "zero" for name in names}
            if baseline == "mean":
                means = {name: _MeanAccumulator(modules[name]) for name in names}
                run(means)
                baselines = {name: acc.compute() for name, acc in means.items()}
            accs = {
                name: _ImportanceAccumulator(modules[name], output, baselines[name], num_permutations, generator,
                                             activation)
                for name in names
            }
            run(accs)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return {name: acc.compute() for name, acc in accs.items()}


def prune_by_importance(
    model: nn.Module, importances: Mapping[str, Tensor], importance_level: float
) -> ShapleyReport:
    """Mask each named layer's weight by :func:`importance_mask` (``torch.nn.utils.prune``).

    Masks combine with masks already on a module; kept weights are unchanged.

    Args:
        model: network holding the layers.
        importances: layer name -> link importances shaped like its weight.
        importance_level: ``m`` in (0, 1].

    Returns:
        :class:`ShapleyReport` counted on the modules' masks after pruning.

    Raises:
        ValueError: ``importance_level`` outside (0, 1], unknown layer, shape mismatch.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 4.0], [3.0, 2.0]]))
        >>> report = prune_by_importance(net, {"0": net[0].weight.abs()}, 0.7)
        >>> report
        ShapleyReport(layers={'0': (2, 4)}, sparsity=0.5)
        >>> net[0].weight
        tensor([[0., 4.],
                [3., 0.]], grad_fn=<MulBackward0>)
    """
    m = check_importance_level(importance_level)
    resolve_layers(model, list(importances))
    counts: dict[str, tuple[int, int]] = {}
    for name, phi in importances.items():
        module = model.get_submodule(name)
        if phi.shape != module.weight.shape:
            raise ValueError(
                f"Expected importances[{name!r}] shaped like its weight {tuple(module.weight.shape)}, "
                f"but got {tuple(phi.shape)}."
            )
        prune.custom_from_mask(module, "weight", importance_mask(phi, m).to(module.weight.device))
        counts[name] = (int(module.weight_mask.sum()), module.weight_mask.numel())
    total = sum(t for _, t in counts.values())
    pruned = sum(t - k for k, t in counts.values())
    return ShapleyReport(layers=counts, sparsity=pruned / total if total else 0.0)


def shapley_prune(
    model: nn.Module,
    data: Tensor | Iterable[Any],
    importance_level: float,
    layers: Sequence[str] | None = None,
    output: str = "pre",
    num_batches: int | None = None,
    num_permutations: int = 128,
    generator: torch.Generator | None = None,
    baseline: str = "mean",
) -> ShapleyReport:
    """Estimate Shapley link importance on ``data`` and prune every layer to ``importance_level``.

    Args:
        model: network to prune in place.
        data: batches as in :func:`model_link_importance`.
        importance_level: ``m`` in (0, 1]: fraction of each layer's total importance kept.
        layers: dotted Linear/Conv2d names (``None``: all).
        output, num_batches, num_permutations, generator, baseline: as
            :func:`model_link_importance`.

    Returns:
        :class:`ShapleyReport` with kept/total per layer and the sparsity eta.

    Raises:
        ValueError: bad arguments or layer names (before anything is pruned).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.5, 1.0]]))
        >>> x = torch.tensor([[1.0, 1.0, 5.0], [-1.0, -1.0, 5.0]])  # unit 2 is constant
        >>> shapley_prune(net, x, importance_level=1.0)
        ShapleyReport(layers={'0': (4, 6)}, sparsity=0.3333333333333333)
    """
    check_importance_level(importance_level)
    phis = model_link_importance(
        model, data, layers, output, num_batches, num_permutations, generator, baseline
    )
    return prune_by_importance(model, {name: li.phi for name, li in phis.items()}, importance_level)


__all__ = ["BASELINES", "OUTPUTS", "LinkImportance", "ShapleyReport", "ShapleyValues", "check_importance_level",
           "importance_mask", "link_importance", "link_shapley", "model_link_importance", "prune_by_importance",
           "resolve_layers", "shapley_layers", "shapley_prune", "unit_importance"]
