"""How big a (pruned) network is: weight sparsity, parameter counts and FLOPs.

All three read the *effective* weights, so they work on plain networks, on networks carrying
``torch.nn.utils.prune`` reparametrisations (``weight = weight_orig * weight_mask``, read
directly, never from the ``weight`` attribute the pruning hook refreshes only at the next
forward) and on networks whose channels were removed.

FLOPs are counted as **multiply-accumulates (MACs)** of the convolution and linear layers,
the convention of the pruning literature (the paper's tables, Torch-Pruning's
``count_ops_and_params``): one MAC per weight per output position, biases, BatchNorm,
activations and pooling not counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from attrpreserve.pruning.masks import effective_tensor
from attrpreserve.pruning.targets import prunable_layers


def sparsity(module: nn.Module, parameters: str = "conv") -> float:
    """Fraction of the prunable weights that are zero (the paper's eta).

    Only the ``weight`` tensors of the layers :func:`prunable_layers` selects count (not biases,
    not BatchNorm).

    Args:
        module: the network.
        parameters: ``"conv"`` or ``"conv+linear"``.

    Raises:
        ValueError: unknown ``parameters``, or ``module`` has no such layer.

    Example:
        >>> conv = nn.Conv2d(1, 2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.copy_(torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 5.0]).view(2, 1, 2, 2))
        >>> sparsity(conv)
        0.375
    """
    layers = prunable_layers(module, parameters)
    if not layers:
        raise ValueError(
            f"Expected argument `module` to contain {parameters} layers, but {type(module).__name__} has none."
        )
    zeros = total = 0
    for _, layer in layers:
        weight = effective_tensor(layer, "weight")
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total


def _named_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    # One entry per learnable tensor as the forward uses it: `weight` for `weight_orig`+mask.
    for layer in module.modules():
        for name, param in layer.named_parameters(recurse=False):
            base = name[: -len("_orig")] if name.endswith("_orig") else None
            if base is not None and isinstance(getattr(layer, f"{base}_mask", None), Tensor):
                yield base, effective_tensor(layer, base)
            else:
                yield name, param.detach()


def count_parameters(module: nn.Module, nonzero: bool = False) -> int:
    """Number of learnable parameters (pruning masks and BatchNorm statistics excluded).

    Args:
        module: the network.
        nonzero: count only non-zero effective values (what survives unstructured pruning).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
        >>> count_parameters(net)  # conv 3*4*9 + 4, BatchNorm 4 + 4, linear 4*2 + 2
        130
        >>> with torch.no_grad():
        ...     _ = net[3].bias.zero_()
        >>> count_parameters(net, nonzero=True)  # minus 2 linear and 4 BatchNorm biases (start at 0)
        124
    """
    if nonzero:
        return sum(int(torch.count_nonzero(t)) for _, t in _named_tensors(module))
    return sum(t.numel() for _, t in _named_tensors(module))


def check_input_size(input_size: Sequence[int], argument: str = "input_size") -> tuple[int, ...]:
    """Return ``input_size`` as a tuple of positive ints (at least two: batch, channels, ...).

    Raises:
        ValueError: anything else.

    Example:
        >>> check_input_size([1, 3, 32, 32])
        (1, 3, 32, 32)
    """
    size = tuple(input_size) if isinstance(input_size, Sequence) else ()
    if len(size) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(
            f"Expected argument `{argument}` to be a tuple of positive ints (batch, channels, ...), "
            f"but got {input_size!r}."
        )
    return size


def count_flops(module: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), nonzero: bool = True) -> int:
    """Multiply-accumulates (MACs) of the conv and linear layers for one forward of ``input_size``.

    A convolution costs ``nnz(weight) * output positions`` MACs per sample (``nnz = numel`` when
    ``nonzero=False``), a linear layer ``nnz(weight)`` per output row; with ``nonzero`` each
    layer's dense count is thus scaled by its weight density. The network runs once on zeros in
    eval mode without gradients (BatchNorm statistics untouched); every layer's train/eval mode
    is restored afterwards.

    Args:
        module: the network.
        input_size: ``(N, C, H, W)`` (the batch size multiplies the count).
        nonzero: skip MACs of zero weights (pruned networks); ``False`` gives the dense count.

    Raises:
        ValueError: ``input_size`` is not a tuple of positive ints, or the network has no
            conv/linear layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
        >>> count_flops(net, (1, 3, 8, 8), nonzero=False)  # 8*8 * 4*3*3*3  +  256*2
        7424
    """
    size = check_input_size(input_size)
    layers = prunable_layers(module, "conv+linear")
    if not layers:
        raise ValueError(
            f"Expected argument `module` to contain conv or linear layers, but {type(module).__name__} has none."
        )
    total = 0

    def hook(layer: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        weight = effective_tensor(layer, "weight")
        used = int(torch.count_nonzero(weight)) if nonzero else weight.numel()
        # Conv: output positions x (N * spatial); linear: output rows. Weight row = output unit.
        positions = output.numel() // weight.shape[0]
        total += positions * used

    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    modes = {m: m.training for m in module.modules()}
    handles = [layer.register_forward_hook(hook) for _, layer in layers]
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return total


__all__ = ["check_input_size", "count_flops", "count_parameters", "sparsity"]
