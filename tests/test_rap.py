"""RAP (Relative Attributing Propagation): hand-worked nets, a loop-by-loop re-implementation of
the authors' rules, conservation on VGG-style networks, and the method's place in ``attribute``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrpreserve.attribution.methods import attribute
from attrpreserve.attribution.rap import rap
from attrpreserve.models import vgg_small


def _set(layer: nn.Linear, weight: list, bias: list) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.tensor(bias, dtype=layer.bias.dtype))


def test_two_layer_net_by_hand():
    # h = relu([3 - 1, 6 + 1]) = [2, 7]; logit = 2*2 + 1*7 - 1 = 10
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    _set(net[0], [[1.0, -1.0], [2.0, 1.0]], [0.0, 0.0])
    _set(net[2], [[2.0, 1.0]], [-1.0])
    # output layer: contributions [4, 7], the bias -1 (all positive contributions) split 4 : 7
    # -> [40/11, 70/11]. Input layer, z^B with L = 1, H = 3 (the input's min and max):
    # unit 0 (w = [1, -1]): terms [3 - 1, -1 + 3] = [2, 2], z = 4 -> [20/11, 20/11];
    # unit 1 (w = [2, 1]): terms [6 - 2, 1 - 1] = [4, 0], z = 4 -> [70/11, 0]
    relevance = rap(net, torch.tensor([[3.0, 1.0]]), torch.tensor([0]))
    assert torch.allclose(relevance, torch.tensor([[90 / 11, 20 / 11]]))
    assert float(relevance.sum()) == pytest.approx(10.0)


def test_output_layer_makes_relevance_relative():
    # contributions [4, -2] and bias 1: the bias splits 4 : -2 -> +2 to the agreeing term, -1 to the
    # opposing term -> r = [6, -3], sum 3; relative: |r| * 3 / 9 = [2, 1]
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    _set(net[0], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    _set(net[2], [[1.0, -1.0]], [1.0])
    relevance = rap(net, torch.tensor([[4.0, 2.0]]), torch.tensor([0]))
    # input layer: identity weights, L = 2, H = 4; unit 0 term [4 - 2, 0] -> z = 2 -> [2, 0];
    # unit 1 term [0, 2 - 2] -> z = 0 -> no relevance passes (lost, as the z^B rule does)
    assert torch.allclose(relevance, torch.tensor([[2.0, 0.0]]))


def _loop_rap(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, target: int) -> list[float]:
    """The authors' rules for a Linear-ReLU chain, one number at a time (float64)."""
    acts = [x.double().tolist()]
    for w, b in zip(weights[:-1], biases[:-1]):
        z = [sum(w[j, i].item() * acts[-1][i] for i in range(w.shape[1])) + b[j].item() for j in range(w.shape[0])]
        acts.append([max(v, 0.0) for v in z])
    w, b, h = weights[-1][target], biases[-1][target].item(), acts[-1]
    pp = [max(h[i], 0) * max(w[i].item(), 0) for i in range(len(h))]
    pn = [max(h[i], 0) * min(w[i].item(), 0) for i in range(len(h))]
    agree, oppose = sum(pp), sum(pn)
    r = [h[i] * w[i].item() for i in range(len(h))]
    r = [r[i] + (pp[i] * b * agree / (agree + oppose) / agree if agree else 0)
         + (pn[i] * b * oppose / (agree + oppose) / oppose if oppose else 0) for i in range(len(h))]
    total, size = sum(r), sum(abs(v) for v in r)
    relevance = [abs(v) * total / size for v in r]
    for layer in range(len(weights) - 2, 0, -1):  # hidden layers, inputs >= 0 (after ReLU)
        w, inp = weights[layer], acts[layer]
        c = [0.0] * len(inp)
        for j, rel in enumerate(relevance):
            if rel == 0:
                continue
            a = sum(inp[i] * max(w[j, i].item(), 0) for i in range(len(inp)))
            bb = -sum(inp[i] * min(w[j, i].item(), 0) for i in range(len(inp)))
            for i in range(len(inp)):
                if a:
                    c[i] += inp[i] * max(w[j, i].item(), 0) * rel / a  # positive and negative R through A
                if bb:
                    c[i] += -inp[i] * min(w[j, i].item(), 0) * rel * (bb / (a + bb)) / bb
        excess, nonzero = sum(c) - sum(relevance), sum(v != 0 for v in c)
        relevance = [v - excess / nonzero if v != 0 else 0.0 for v in c]
    w, inp = weights[0], acts[0]
    low, high = min(inp), max(inp)
    out = [0.0] * len(inp)
    for j, rel in enumerate(relevance):
        terms = [inp[i] * w[j, i].item() - low * max(w[j, i].item(), 0) - high * min(w[j, i].item(), 0)
                 for i in range(len(inp))]
        if sum(terms):
            out = [o + t * rel / sum(terms) for o, t in zip(out, terms)]
    return out


def test_deeper_linear_net_matches_the_rules_one_number_at_a_time():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    classes = torch.tensor([0, 1, 1])
    got = rap(net, x, classes)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for row in range(3):
        expected = _loop_rap([m.weight.detach() for m in linears], [m.bias.detach() for m in linears], x[row],
                             int(classes[row]))
        assert got[row].tolist() == pytest.approx(expected, abs=1e-10)
    # conservation: each example's relevance sums to its target logit, except where a whole ReLU
    # layer is off (what follows is biases alone, which RAP cannot place): row 1 here
    alive = torch.stack([net[:end](x).gt(0).any(dim=1) for end in (2, 4, 7)]).all(dim=0)
    assert alive.tolist() == [True, False, True]
    logits = net(x).gather(1, classes[:, None])[:, 0]
    assert torch.allclose(got.sum(dim=1)[alive], logits[alive], atol=1e-10)
    assert bool((got[~alive] == 0).all())


def _randomised_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return net.eval()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_conservation_on_vgg(dtype, tol):
    torch.manual_seed(0)
    net = _randomised_bn(vgg_small(num_classes=3, width_divisor=8)).to(dtype)
    images = torch.randn(4, 3, 32, 32, dtype=dtype)
    classes = torch.tensor([0, 1, 2, 0])
    relevance = rap(net, images, classes)
    logits = net(images).gather(1, classes[:, None])[:, 0].detach()
    assert relevance.shape == images.shape
    assert torch.allclose(relevance.flatten(1).sum(dim=1), logits, rtol=tol, atol=tol * logits.abs().max())
    assert bool((relevance > 0).any()) and bool((relevance < 0).any())  # both signs, as RAP separates them


def test_rap_through_attribute():
    torch.manual_seed(0)
    net = vgg_small(num_classes=3, width_divisor=8)
    images = torch.randn(2, 3, 32, 32)
    index, classes = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    maps = attribute(net, images, classes, "rap", image_index=index)
    assert net.training  # attribute restores the train flag
    chunked = attribute(net, images, classes, "rap", image_index=index, internal_batch_size=2)
    assert torch.allclose(maps, chunked, atol=1e-6)
    assert torch.allclose(maps, rap(net.eval(), images[index], classes).sum(dim=1), atol=1e-6)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) + x)


def test_rap_rejects_models_it_cannot_explain():
    with pytest.raises(ValueError, match="chain"):
        rap(Residual(), torch.randn(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="Sigmoid"):
        rap(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1)), torch.randn(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="last module"):
        rap(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.randn(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="layer"):
        attribute(vgg_small(num_classes=2, width_divisor=8), torch.randn(1, 3, 32, 32), [0], "rap", layer="conv5_3")
