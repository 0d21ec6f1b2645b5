"""Flowgraphs of sparse (pruned) MLPs: what a lottery ticket actually computes, drawn as a graph.

:func:`flowgraph` turns an ``nn.Sequential`` of ``Linear``/``ReLU``/``Flatten`` layers into a
``networkx.DiGraph`` with one node per non-zero operation and one edge per non-zero weight:

* nodes ``x{j}`` (``kind="input"``), ``s{l}_{i}`` (weighted sum of unit ``i`` of the ``l``-th
  Linear, ``kind="sum"``, attribute ``bias``), ``a{l}_{i}`` (its ReLU, ``kind="relu"``) and
  ``y{k}`` (the last operation's units, ``kind="output"``); ``layer`` is the node's column;
* edges ``input/relu -> sum`` carry the effective weight (``weight``, ``kind="weight"``; masks
  from ``torch.nn.utils.prune`` are honoured), ``sum -> relu`` edges carry ``weight=1.0`` and
  ``kind="activation"``;
* every node has interval bounds ``lower``/``upper`` propagated from ``input_bounds`` by interval
  arithmetic (``W+ l + W- u + b`` and ``W+ u + W- l + b``; ReLU is monotone), exact for one
  Linear layer and sound (possibly loose) for deeper nets; with ``input=`` also ``value``;
* dropped: inputs with no non-zero outgoing weight, and hidden units with neither a non-zero
  incoming nor a non-zero outgoing weight. A hidden unit with outgoing but no incoming weights
  stays (it feeds the constant ``ReLU(bias)`` forward); outputs always stay.

Render with :func:`to_dot` (Graphviz text, no Graphviz needed), :func:`draw` (matplotlib) or
:func:`save_svg`. Colours: green for a positive weight, red negative, grey zero; pen width grows
with ``|weight|``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from attrpreserve.pruning.masks import effective_tensor

POSITIVE, NEGATIVE, ZERO = "green", "red", "grey"
_SUPPORTED = (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity)


def effective_weight(module: nn.Linear) -> Tensor:
    """The weight a (possibly pruned) Linear computes with: ``weight_orig * weight_mask`` when pruned.

    Reads the reparametrisation directly, so it is right even before the next forward refreshes
    ``module.weight`` (e.g. right after rewinding ``weight_orig``).

    Example:
        >>> from torch.nn.utils import prune
        >>> layer = prune.custom_from_mask(nn.Linear(2, 1), "weight", torch.tensor([[1.0, 0.0]]))
        >>> bool(effective_weight(layer)[0, 1] == 0)
        True
    """
    return effective_tensor(module, "weight")


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"Expected argument `model` to be an nn.Sequential MLP, but got {type(model).__name__}.")
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            continue
        if not isinstance(module, _SUPPORTED):
            raise ValueError(
                f"Expected argument `model` to hold only Linear, ReLU, Flatten and Identity layers, but layer "
                f"{name!r} is {type(module).__name__}."
            )
        layers.append((name, module))
    if not any(isinstance(m, nn.Linear) for _, m in layers):
        raise ValueError("Expected argument `model` to contain at least one nn.Linear.")
    return layers


def _as_vector(value: Any, size: int, argument: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if t.numel() == 1:
        return t.reshape(()).expand(size).clone()
    if t.numel() != size:
        raise ValueError(f"Expected argument `{argument}` to hold 1 or {size} values, but got shape {tuple(t.shape)}.")
    return t.reshape(size)


def flowgraph(
    model: nn.Module,
    input_bounds: tuple[Any, Any] = (0.0, 1.0),
    output: int | None = None,
    input_shape: Sequence[int] | None = None,
    collapse_first_layer: bool = False,
    input: Tensor | None = None,  # noqa: A002 - the documented keyword
) -> nx.DiGraph:
    """Graph of the non-zero operations of an MLP, with interval bounds (and values) per node.

    Args:
        model: ``nn.Sequential`` of ``Linear``, ``ReLU``, ``Flatten`` (and ``Identity``) layers,
            possibly pruned with ``torch.nn.utils.prune``.
        input_bounds: ``(lower, upper)``: numbers or one value per input feature.
        output: keep only the subgraph whose nodes reach output ``output``.
        input_shape: shape of one input (e.g. ``(8, 8)``), needed by ``collapse_first_layer``.
        collapse_first_layer: replace the input nodes and first-layer edges by one node per
            first-layer unit carrying its weights as a ``weight_image`` (numpy, ``input_shape``).
        input: one input (``[in_features]``, ``input_shape`` or ``[1, ...]``): adds ``value``.

    Returns:
        ``networkx.DiGraph`` as described in the module docstring; ``graph.graph`` holds
        ``input_shape``, ``collapsed`` and ``num_outputs``.

    Raises:
        ValueError: unsupported layer, bad bounds, shapes or ``output`` index.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        ...     _ = net[0].bias.zero_(); _ = net[2].weight.copy_(torch.tensor([[2.0, 0.0]]))
        ...     _ = net[2].bias.fill_(0.5)
        >>> g = flowgraph(net)
        >>> sorted(g.nodes), g.number_of_edges()
        (['a1_0', 's1_0', 'x0', 'x1', 'y0'], 4)
        >>> g.nodes["s1_0"]["lower"], g.nodes["s1_0"]["upper"], g.nodes["y0"]["upper"]
        (-1.0, 1.0, 2.5)
    """
    layers = _layers(model)
    linears = [m for _, m in layers if isinstance(m, nn.Linear)]
    n_in = linears[0].in_features
    if collapse_first_layer and input_shape is None:
        raise ValueError("Expected argument `input_shape` (e.g. (8, 8)) with collapse_first_layer=True, but got None.")
    if input_shape is not None and int(np.prod(input_shape)) != n_in:
        raise ValueError(
            f"Expected argument `input_shape` to have {n_in} elements (the first layer's inputs), "
            f"but got {input_shape}."
        )
    if not (isinstance(input_bounds, (tuple, list)) and len(input_bounds) == 2):
        raise ValueError(f"Expected argument `input_bounds` to be a pair (lower, upper), but got {input_bounds!r}.")
    lower, upper = (_as_vector(b, n_in, "input_bounds") for b in input_bounds)
    if bool((lower > upper).any()):
        raise ValueError("Expected argument `input_bounds` to have lower <= upper everywhere.")
    value = None if input is None else _as_vector(input, n_in, "input")

    # The units of the last Linear/ReLU are the outputs.
    last = max(i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Linear, nn.ReLU)))
    graph = nx.DiGraph(input_shape=tuple(input_shape) if input_shape is not None else None,
                       collapsed=bool(collapse_first_layer))
    current: list[str] | None = None
    if not collapse_first_layer:
        current = [f"x{j}" for j in range(n_in)]
        for j, name in enumerate(current):
            graph.add_node(name, kind="input", layer=0, unit=j, lower=float(lower[j]), upper=float(upper[j]),
                           **({"value": float(value[j])} if value is not None else {}))
    column, linear_index = 0, 0
    chains: dict[str, list[str]] = {}  # last node of a hidden unit -> its nodes (sum, ReLU...), for dropping
    for position, (_, module) in enumerate(layers):
        if not isinstance(module, (nn.Linear, nn.ReLU)):
            continue
        column += 1
        is_output = position == last
        if isinstance(module, nn.Linear):
            linear_index += 1
            weight = effective_weight(module).double().cpu()
            bias = module.bias.detach().double().cpu() if module.bias is not None else torch.zeros(weight.shape[0])
            w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
            lower, upper = w_pos @ lower + w_neg @ upper + bias, w_pos @ upper + w_neg @ lower + bias
            if value is not None:
                value = weight @ value + bias
            names = [f"y{i}" if is_output else f"s{linear_index}_{i}" for i in range(weight.shape[0])]
            for i, name in enumerate(names):
                attrs: dict[str, Any] = {
                    "kind": "output" if is_output else "sum", "layer": column, "unit": i, "bias": float(bias[i]),
                    "lower": float(lower[i]), "upper": float(upper[i]),
                    "num_inputs": int((weight[i] != 0).sum()),
                }
                if value is not None:
                    attrs["value"] = float(value[i])
                if current is None:
                    attrs["weight_image"] = weight[i].reshape(tuple(input_shape)).numpy()  # type: ignore[arg-type]
                graph.add_node(name, **attrs)
            if current is not None:
                rows, cols = torch.nonzero(weight, as_tuple=True)
                for i, j in zip(rows.tolist(), cols.tolist()):
                    graph.add_edge(current[j], names[i], weight=float(weight[i, j]), kind="weight")
            if not is_output:
                chains.update((name, [name]) for name in names)
        else:
            if current is None:
                raise ValueError("Expected argument `model` to start with an nn.Linear (before any ReLU).")
            lower, upper = lower.clamp(min=0), upper.clamp(min=0)
            if value is not None:
                value = value.clamp(min=0)
            names = [f"y{i}" if is_output else f"a{linear_index}_{i}" for i in range(len(current))]
            for i, (src, name) in enumerate(zip(current, names)):
                graph.add_node(name, kind="output" if is_output else "relu", layer=column, unit=i,
                               lower=float(lower[i]), upper=float(upper[i]),
                               **({"value": float(value[i])} if value is not None else {}))
                graph.add_edge(src, name, weight=1.0, kind="activation")
            for src, name in zip(current, names):
                chain = chains.pop(src, None)
                if chain is not None and not is_output:  # a ReLU of an output unit is not droppable
                    chains[name] = [*chain, name]
        current = names
    graph.graph["num_outputs"] = len(current or [])
    _drop_unused(graph, chains)
    if output is not None:
        if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < len(current or []):
            raise ValueError(f"Expected argument `output` in [0, {len(current or [])}), but got {output!r}.")
        target = f"y{output}"
        graph = graph.subgraph(nx.ancestors(graph, target) | {target}).copy()
    return graph


def _drop_unused(graph: nx.DiGraph, chains: dict[str, list[str]]) -> None:
    for node, data in list(graph.nodes(data=True)):
        if data["kind"] == "input" and graph.out_degree(node) == 0:
            graph.remove_node(node)
    for tail, chain in chains.items():
        if graph.nodes[chain[0]]["num_inputs"] == 0 and graph.out_degree(tail) == 0:
            graph.remove_nodes_from(chain)


# -- rendering ------------------------------------------------------------------------------------
def edge_colour(weight: float) -> str:
    """``"green"`` for a positive weight, ``"red"`` negative, ``"grey"`` zero.

    Example:
        >>> edge_colour(0.3), edge_colour(-2.0), edge_colour(0.0)
        ('green', 'red', 'grey')
    """
    return POSITIVE if weight > 0 else NEGATIVE if weight < 0 else ZERO


def _pen_widths(graph: nx.DiGraph, low: float = 0.5, high: float = 4.0) -> dict[tuple[str, str], float]:
    weights = [abs(d["weight"]) for *_, d in graph.edges(data=True) if d.get("kind") == "weight"]
    top = max(weights, default=0.0) or 1.0
    return {
        (u, v): (1.0 if d.get("kind") != "weight" else low + (high - low) * abs(d["weight"]) / top)
        for u, v, d in graph.edges(data=True)
    }


def _label(node: str, data: dict[str, Any]) -> str:
    text = node if data["kind"] != "relu" else f"ReLU {node}"
    if "weight_image" in data:
        text += f"\\n({'x'.join(map(str, data['weight_image'].shape))} weights)"
    text += f"\\n[{data['lower']:.3g}, {data['upper']:.3g}]"
    if "value" in data:
        text += f"\\n= {data['value']:.3g}"
    return text


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text of a :func:`flowgraph` (left to right, one rank per layer).

    Args:
        graph: from :func:`flowgraph`.

    Returns:
        DOT source; weight edges coloured by sign with pen width by ``|weight|``, activation
        edges dashed.

    Example:
        >>> g = nx.DiGraph()
        >>> g.add_node("x0", kind="input", layer=0, lower=0.0, upper=1.0)
        >>> g.add_node("y0", kind="output", layer=1, lower=-2.0, upper=0.0)
        >>> g.add_edge("x0", "y0", weight=-2.0, kind="weight")
        >>> print(to_dot(g))
        digraph flowgraph {
          rankdir=LR;
          node [shape=circle, fontsize=10];
          { rank=same; "x0"; }
          { rank=same; "y0"; }
          "x0" [label="x0\\n[0, 1]", shape=box];
          "y0" [label="y0\\n[-2, 0]", shape=doublecircle];
          "x0" -> "y0" [color="red", penwidth=4.00];
        }
    """
    shapes = {"input": "box", "sum": "circle", "relu": "diamond", "output": "doublecircle"}
    lines = ["digraph flowgraph {", "  rankdir=LR;", "  node [shape=circle, fontsize=10];"]
    columns: dict[int, list[str]] = {}
    for node, data in graph.nodes(data=True):
        columns.setdefault(data.get("layer", 0), []).append(node)
    for column in sorted(columns):
        lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in columns[column]) + " }")
    for node, data in graph.nodes(data=True):
        lines.append(f'  "{node}" [label="{_label(node, data)}", shape={shapes.get(data["kind"], "circle")}];')
    widths = _pen_widths(graph)
    for u, v, data in graph.edges(data=True):
        style = ", style=dashed" if data.get("kind") == "activation" else ""
        lines.append(f'  "{u}" -> "{v}" [color="{edge_colour(data["weight"])}", penwidth={widths[u, v]:.2f}{style}];')
    lines.append("}")
    return "\n".join(lines)


def layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Layered positions: x = the node's ``layer``, nodes of a column spread over y in unit order.

    Example:
        >>> g = flowgraph(nn.Sequential(nn.Linear(2, 1)))
        >>> layout(g)
        {'x0': (0.0, 1.0), 'x1': (0.0, 0.0), 'y0': (1.0, 0.5)}
    """
    columns: dict[int, list[str]] = {}
    for node, data in graph.nodes(data=True):
        columns.setdefault(data.get("layer", 0), []).append(node)
    positions = {}
    for column, nodes in columns.items():
        nodes.sort(key=lambda n: graph.nodes[n].get("unit", 0))
        count = len(nodes)
        for k, node in enumerate(nodes):
            positions[node] = (float(column), 0.5 if count == 1 else 1.0 - k / (count - 1))
    return positions


def draw(graph: nx.DiGraph, ax: Any = None) -> Figure:
    """Draw a :func:`flowgraph` with matplotlib (layered layout, same colours and widths as DOT).

    Collapsed first-layer units show their weight image as a small inset (blue negative, red
    positive). No pyplot state is touched.

    Args:
        graph: from :func:`flowgraph`.
        ax: matplotlib Axes to draw into; ``None``: a new Figure.

    Returns:
        The Figure drawn on.

    Example:
        >>> draw(flowgraph(nn.Sequential(nn.Linear(2, 1)))).axes[0].get_title()
        '3 vertices, 2 edges'
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    if ax is None:
        columns = 1 + max((d.get("layer", 0) for _, d in graph.nodes(data=True)), default=0)
        fig = Figure(figsize=(2.2 * columns + 1, 7))
        ax = fig.add_subplot()
    fig = ax.figure
    pos = layout(graph)
    widths = _pen_widths(graph)
    segments, colours, lws = [], [], []
    for u, v, data in graph.edges(data=True):
        segments.append([pos[u], pos[v]])
        colours.append(edge_colour(data["weight"]))
        lws.append(widths[u, v] * 0.6)
    if segments:
        ax.add_collection(LineCollection(segments, colors=colours, linewidths=lws, alpha=0.7, zorder=1))
    marker = {"input": "s", "sum": "o", "relu": "D", "output": "o"}
    face = {"input": "#dddddd", "sum": "white", "relu": "#ffe9b3", "output": "#b3d1ff"}
    for kind in marker:
        nodes = [n for n, d in graph.nodes(data=True) if d["kind"] == kind and "weight_image" not in d]
        if nodes:
            xy = np.array([pos[n] for n in nodes])
            ax.scatter(xy[:, 0], xy[:, 1], s=40, marker=marker[kind], c=face[kind], edgecolors="black",
                       linewidths=0.6, zorder=2, label=kind)
    images = [(n, d["weight_image"]) for n, d in graph.nodes(data=True) if "weight_image" in d]
    if images:
        scale = max(float(np.abs(img).max()) for _, img in images) or 1.0
        # Fill about 70 % of the vertical space a node gets (figure height in points / nodes).
        height = fig.get_figheight() * 72 * ax.get_position().height
        zoom = float(np.clip(0.7 * height / (len(images) * max(images[0][1].shape)), 0.5, 4.0))
        for node, img in images:
            box = OffsetImage(img, zoom=zoom, cmap="bwr", norm=Normalize(-scale, scale))
            ax.add_artist(AnnotationBbox(box, pos[node], frameon=True, pad=0.1, zorder=3))
    for k in range(int(graph.graph.get("num_outputs", 0))):
        if f"y{k}" in pos:
            x, y = pos[f"y{k}"]
            ax.annotate(f"y{k}", (x, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlim(min((p[0] for p in pos.values()), default=0) - 0.5, max((p[0] for p in pos.values()), default=0) + 0.7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_axis_off()
    ax.set_title(f"{graph.number_of_nodes()} vertices, {graph.number_of_edges()} edges", fontsize=9)
    return fig


def save_svg(graph: nx.DiGraph, path: str | os.PathLike) -> Path:
    """Draw ``graph`` (:func:`draw`) and write it as SVG to ``path`` (parent folders created).

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_svg(flowgraph(nn.Sequential(nn.Linear(2, 1))), Path(folder) / "g.svg")
        ...     "<svg" in path.read_text()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(graph).savefig(path, format="svg", bbox_inches="tight")
    return path
