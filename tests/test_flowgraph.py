"""Flowgraphs of pruned MLPs: structure, interval bounds (brute force), rendering, the lottery example."""

import importlib.util
import itertools
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn.utils import prune

from attrpreserve.flowgraph import draw, effective_weight, flowgraph, save_svg, to_dot

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lottery_flowgraph.py"


def _pruned_net() -> nn.Sequential:
    """4 inputs -> 5 hidden -> 2 outputs, pruned by hand:

    h0 <- x0, x1; h1 <- nothing; h2 <- x2; h3 <- x0; h4 <- nothing; x3 feeds nothing.
    y0 <- h0, h1; y1 <- h2. So h3 has only incoming, h1 only outgoing, h4 neither (dropped).
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        for layer in (net[1], net[3]):
            layer.weight.copy_(torch.rand(layer.weight.shape) + 0.5)  # no accidental zeros
    mask1 = torch.zeros(5, 4)
    mask1[0, 0] = mask1[0, 1] = mask1[2, 2] = mask1[3, 0] = 1
    mask2 = torch.zeros(2, 5)
    mask2[0, 0] = mask2[0, 1] = mask2[1, 2] = 1
    prune.custom_from_mask(net[1], "weight", mask1)
    prune.custom_from_mask(net[3], "weight", mask2)
    return net


def test_nodes_and_edges_follow_the_nonzero_structure():
    net = _pruned_net()
    g = flowgraph(net)
    expected_nodes = {
        "x0", "x1", "x2",  # x3 has no outgoing weight
        "s1_0", "a1_0", "s1_1", "a1_1", "s1_2", "a1_2", "s1_3", "a1_3",  # h4 dropped
        "y0", "y1",
    }
    assert set(g.nodes) == expected_nodes
    weight_edges = {(u, v): d["weight"] for u, v, d in g.edges(data=True) if d["kind"] == "weight"}
    w1, w2 = effective_weight(net[1]), effective_weight(net[3])
    expected = {("x0", "s1_0"): w1[0, 0], ("x1", "s1_0"): w1[0, 1], ("x2", "s1_2"): w1[2, 2],
                ("x0", "s1_3"): w1[3, 0], ("a1_0", "y0"): w2[0, 0], ("a1_1", "y0"): w2[0, 1],
                ("a1_2", "y1"): w2[1, 2]}
    assert weight_edges == pytest.approx({k: float(v) for k, v in expected.items()})
    assert len(weight_edges) == int((w1 != 0).sum() + (w2 != 0).sum())
    activation = {(u, v) for u, v, d in g.edges(data=True) if d["kind"] == "activation"}
    assert activation == {(f"s1_{i}", f"a1_{i}") for i in range(4)}
    kinds = nx.get_node_attributes(g, "kind")
    assert kinds["x0"] == "input" and kinds["s1_0"] == "sum" and kinds["a1_0"] == "relu" and kinds["y1"] == "output"
    assert g.nodes["s1_1"]["lower"] == g.nodes["s1_1"]["upper"] == pytest.approx(net[1].bias[1].item())


def _corners(lower, upper):
    return torch.tensor(list(itertools.product(*zip(lower.tolist(), upper.tolist()))), dtype=torch.float64)


@pytest.mark.parametrize("relu", [False, True])
def test_bounds_exact_for_one_layer_against_box_corners(relu):
    torch.manual_seed(1)
    layers = [nn.Linear(4, 3)] + ([nn.ReLU()] if relu else [])
    net = nn.Sequential(*layers).double()
    lower = torch.tensor([-1.0, 0.0, 0.5, -2.0], dtype=torch.float64)
    upper = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=torch.float64)
    g = flowgraph(net, input_bounds=(lower, upper))
    with torch.no_grad():
        outputs = net(_corners(lower, upper))  # a linear (then monotone) map: extremes at corners
    for k in range(3):
        assert g.nodes[f"y{k}"]["lower"] == pytest.approx(outputs[:, k].min().item(), abs=1e-12)
        assert g.nodes[f"y{k}"]["upper"] == pytest.approx(outputs[:, k].max().item(), abs=1e-12)


def test_bounds_sound_for_two_layers_and_values_follow_the_forward():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    g = flowgraph(net, input_bounds=(-1.0, 2.0))
    x = -1.0 + 3.0 * torch.rand(2000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden, out = net[0](x), net(x)
    for k in range(3):
        node = g.nodes[f"y{k}"]
        assert node["lower"] <= out[:, k].min().item() and out[:, k].max().item() <= node["upper"]
    for i in range(6):
        node = g.nodes[f"s1_{i}"]
        assert node["lower"] <= hidden[:, i].min().item() and hidden[:, i].max().item() <= node["upper"]
    one = flowgraph(net, input_bounds=(-1.0, 2.0), input=x[0])
    assert one.nodes["s1_2"]["value"] == pytest.approx(hidden[0, 2].item())
    assert one.nodes["a1_2"]["value"] == pytest.approx(max(hidden[0, 2].item(), 0.0))
    assert [one.nodes[f"y{k}"]["value"] for k in range(3)] == pytest.approx(out[0].tolist())
    for _, data in one.nodes(data=True):
        assert data["lower"] - 1e-12 <= data["value"] <= data["upper"] + 1e-12


def test_output_subgraph_holds_exactly_the_ancestors():
    net = _pruned_net()
    full = flowgraph(net)
    sub = flowgraph(net, output=0)
    assert set(sub.nodes) == nx.ancestors(full, "y0") | {"y0"}
    assert "y1" not in sub and "s1_3" not in sub and "x2" not in sub
    assert set(sub.edges) == set(full.subgraph(sub.nodes).edges)
    with pytest.raises(ValueError, match="`output`"):
        flowgraph(net, output=2)


def test_collapsed_first_layer_carries_weight_images():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(16, 3), nn.ReLU(), nn.Linear(3, 2))
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    full = flowgraph(net, input_shape=(4, 4))
    g = flowgraph(net, input_shape=(4, 4), collapse_first_layer=True)
    assert not [n for n, d in g.nodes(data=True) if d["kind"] == "input"]
    for i in range(3):
        np.testing.assert_array_equal(g.nodes[f"s1_{i}"]["weight_image"], effective_weight(net[0])[i].reshape(4, 4))
        assert g.in_degree(f"s1_{i}") == 0
        assert g.nodes[f"s1_{i}"]["upper"] == full.nodes[f"s1_{i}"]["upper"]
    assert g.number_of_edges() == full.number_of_edges() - int((effective_weight(net[0]) != 0).sum())
    with pytest.raises(ValueError, match="`input_shape`"):
        flowgraph(net, collapse_first_layer=True)
    with pytest.raises(ValueError, match="`input_shape`"):
        flowgraph(net, input_shape=(3, 3))


def test_dot_colours_and_widths():
    net = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -2.0]]))
    dot = to_dot(flowgraph(net))
    edges = dict(re.findall(r'"(x\d)" -> "y0" \[(.*)\];', dot))
    assert 'color="green"' in edges["x0"] and 'color="red"' in edges["x1"]
    width = {k: float(re.search(r"penwidth=([\d.]+)", v).group(1)) for k, v in edges.items()}
    assert width["x1"] > width["x0"]
    zero = nx.DiGraph()
    zero.add_node("a", kind="input", layer=0, lower=0.0, upper=1.0)
    zero.add_node("b", kind="output", layer=1, lower=0.0, upper=0.0)
    zero.add_edge("a", "b", weight=0.0, kind="weight")
    assert '"a" -> "b" [color="grey"' in to_dot(zero)
    assert dot.startswith("digraph flowgraph {") and dot.rstrip().endswith("}")


def test_draw_and_save_svg(tmp_path):
    net = _pruned_net()
    fig = draw(flowgraph(net))
    assert isinstance(fig, Figure)
    path = save_svg(flowgraph(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1)), input_shape=(2, 2),
                              collapse_first_layer=True), tmp_path / "sub" / "g.svg")
    assert "<svg" in path.read_text()


def test_rejects_unsupported_layers_and_bad_bounds():
    with pytest.raises(ValueError, match="'1' is Conv2d"):
        flowgraph(nn.Sequential(nn.Flatten(), nn.Conv2d(1, 1, 1)))
    with pytest.raises(ValueError, match="`input_bounds`"):
        flowgraph(nn.Sequential(nn.Linear(2, 1)), input_bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="`model`"):
        flowgraph(nn.Linear(2, 1))


def _example():
    spec = importlib.util.spec_from_file_location("lottery_flowgraph", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewind_keeps_masks_and_resets_survivors():
    example = _example()
    torch.manual_seed(5)
    net = example.mlp(8)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    params = [(m, "weight") for m in net.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    example.rewind(net, initial)
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            kept = module.weight_mask.bool()
            assert torch.equal(effective_weight(module)[kept], initial[f"{name}.weight"][kept])
            assert (effective_weight(module)[~kept] == 0).all()
            assert torch.equal(module.bias, initial[f"{name}.bias"])


def test_lottery_example_runs_a_tiny_setting(tmp_path, capsys):
    threads = torch.get_num_threads()  # the example pins one thread; give the others back theirs
    try:
        rows = _example().main(["--rounds", "2", "--epochs", "2", "--target", "0.25", "--hidden", "8",
                                "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    total = 64 * 8 + 8 * 8 + 8 * 10
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["weights"] == total and rows[-1]["weights"] == round(0.25 * total)
    assert rows[-1]["edges"] < rows[0]["edges"] and 0.0 <= rows[-1]["accuracy"] <= 1.0
    for name in ("ticket.svg", "ticket.png", "ticket.dot"):
        assert (tmp_path / name).stat().st_size > 0
    assert "test acc" in capsys.readouterr().out
