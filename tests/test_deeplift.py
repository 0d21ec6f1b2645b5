"""DeepLIFT (rescale and reveal-cancel) against summation-to-delta, captum and hand-worked cases."""

import warnings

import pytest
import torch
from torch import nn

from attrpreserve.attribution.deeplift import deeplift
from attrpreserve.models import vgg_small


def _set(layer: nn.Module, weight: list, bias: list | None = None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=layer.bias.dtype))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()


def _cnn() -> nn.Module:
    """conv, relu, maxpool, linear (plus BN, avg-pool and dropout in eval mode)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(5 * 2 * 2, 3)),
    ).double()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.normal_()
    return net.eval()


def _delta(model: nn.Module, x: torch.Tensor, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (model(x) - model(x0)).gather(1, target[:, None]).squeeze(1)


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_summation_to_delta(name, rule):
    model, shape = {"mlp": (_mlp(), (6, 6)), "cnn": (_cnn(), (6, 2, 8, 8))}[name]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x0 = 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    attr = deeplift(model, x, target, baseline=x0, rule=rule)
    assert attr.shape == x.shape
    delta = _delta(model, x, x0, target)
    assert delta.abs().min() > 1e-3  # a non-trivial check
    torch.testing.assert_close(attr.flatten(1).sum(1), delta, rtol=1e-4, atol=0)


def test_summation_on_vgg_features_avgpool_classifier_float32():
    model = vgg_small(num_classes=4, width_divisor=8).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([1, 3])
    for rule in ("rescale", "reveal_cancel"):
        attr = deeplift(model, x, target, rule=rule)
        delta = _delta(model, x, torch.zeros_like(x), target)
        torch.testing.assert_close(attr.flatten(1).sum(1), delta, rtol=1e-4, atol=1e-5 * delta.abs().max().item())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_rescale_agrees_with_captum(name):
    from captum.attr import DeepLift

    if name == "mlp":
        model, shape = _mlp(), (5, 6)
    else:
        # captum 0.9 mis-attributes a MaxPool next to a ReLU (its own convergence delta is then
        # non-zero), so here a conv separates them; test_summation_to_delta covers relu->maxpool.
        torch.manual_seed(4)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3),
        ).double().eval()
        shape = (5, 2, 8, 8)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x0 = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, delta = DeepLift(model, multiply_by_inputs=True).attribute(
            x.clone(), baselines=x0, target=target, return_convergence_delta=True
        )
    assert delta.abs().max() < 1e-8  # captum is exact on this architecture
    ours = deeplift(model, x, target, baseline=x0)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def _min_net() -> nn.Module:
    """The paper's Fig. 3 network: o = min(i1, i2) = ReLU(i1) - ReLU(i1 - i2) for i >= 0."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    _set(net[0], [[1.0, -1.0], [1.0, 0.0]])
    _set(net[2], [[-1.0, 1.0]])
    return net


def test_min_network_rescale_vs_reveal_cancel_hand_worked():
    net = _min_net()
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    # i1 > i2: h1 = ReLU(i1 - i2) is active; rescale passes i1 through h1 and h2, which cancel, so
    # i2 gets everything: (0, 1). Reveal-cancel: dh1+ = (i1 + (i1 - i2)) / 2, dh1- = -i2 / 2,
    # so C(i1) = i1 - (i1 - i2/2) = i2/2 and C(i2) = i2/2.
    # i1 < i2: h1 is inactive at x and at the reference, so rescale credits o = h2 = i1 to i1
    # alone: (1, 0). Reveal-cancel: dh1+ = (i1 + 0)/2, dh1- = (0 - i1)/2, so C(i1) = i1 - i1/2
    # and C(i2) = i1/2: again the smaller input split evenly.
    torch.testing.assert_close(deeplift(net, x, 0), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(
        deeplift(net, x, 0, rule="reveal_cancel"), torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    )


def test_cancellation_revealed_only_by_reveal_cancel():
    # y = ReLU(x1 - x2) at x = (a, a), reference 0: the input's difference cancels (dx = 0), so
    # rescale (and the gradient fallback) gives 0 to both; reveal-cancel keeps the two sides:
    # dy+ = (ReLU(a) - 0)/2 + (ReLU(0) - ReLU(-a))/2 = a/2, dy- = -a/2.
    net = nn.Sequential(nn.Linear(2, 1, bias=False), nn.ReLU()).double()
    _set(net[0], [[1.0, -1.0]])
    a = 2.0
    x = torch.tensor([[a, a]], dtype=torch.float64)
    torch.testing.assert_close(deeplift(net, x, 0), torch.zeros(1, 2, dtype=torch.float64))
    torch.testing.assert_close(
        deeplift(net, x, 0, rule="reveal_cancel"), torch.tensor([[a / 2, -a / 2]], dtype=torch.float64)
    )


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_saturation_gradient_zero_but_contribution_nonzero(rule):
    # y = 1 - ReLU(1 - x) = min(x, 1): at x = 2 the gradient is 0, yet y moved by 1 from x0 = 0.
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    _set(net[0], [[-1.0]], [1.0])
    _set(net[2], [[-1.0]], [1.0])
    x = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.item() == 0.0
    torch.testing.assert_close(deeplift(net, x.detach(), 0, rule=rule), torch.tensor([[1.0]], dtype=torch.float64))


def test_maxpool_routes_delta_to_the_larger_side():
    pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
    x = torch.tensor([[[[1.0, 5.0], [2.0, 0.0]]]])
    # Input wins: dy = 5 goes to its arg-max.
    torch.testing.assert_close(deeplift(pool, x, 0), torch.tensor([[[[0.0, 5.0], [0.0, 0.0]]]]))
    # Reference wins (max 3 at (1, 0)): dy = 1 - 3 = -2 goes to the reference's arg-max.
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    x0 = torch.tensor([[[[0.0, 0.0], [3.0, 0.0]]]])
    torch.testing.assert_close(deeplift(pool, x, 0, baseline=x0), torch.tensor([[[[0.0, 0.0], [-2.0, 0.0]]]]))


@pytest.mark.parametrize("rule", ["rescale", "reveal_cancel"])
def test_overlapping_maxpool_keeps_summation(rule):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 1, 1])
    attr = deeplift(net, x, target, rule=rule)
    torch.testing.assert_close(attr.flatten(1).sum(1), _delta(net, x, torch.zeros_like(x), target), rtol=1e-6, atol=0)


def test_per_example_target_matches_int_targets():
    model = _mlp()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([2, 0, 1, 2])
    batched = deeplift(model, x, target, rule="reveal_cancel")
    one_by_one = torch.cat([deeplift(model, x[i : i + 1], int(target[i]), rule="reveal_cancel") for i in range(4)])
    torch.testing.assert_close(batched, one_by_one)


def test_errors_name_the_problem():
    model = _mlp()
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="`rule`"):
        deeplift(model, x, 0, rule="gradient")
    with pytest.raises(ValueError, match="`target`"):
        deeplift(model, x, 3)
    with pytest.raises(ValueError, match="`target`"):
        deeplift(model, x, None)
    with pytest.raises(ValueError, match="`baseline`"):
        deeplift(model, x, 0, baseline=torch.zeros(3))
    with pytest.raises(ValueError, match="'1' of type GELU"):
        deeplift(nn.Sequential(nn.Linear(2, 2), nn.GELU()), torch.zeros(1, 2), 0)
    with pytest.raises(ValueError, match="call model.eval"):
        deeplift(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train(), torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="`model`"):
        deeplift(nn.Linear(2, 2), torch.zeros(1, 2), 0)


def test_vgg_style_model_with_other_forward_is_rejected():
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(2, 2)

        def forward(self, x):
            return 2 * self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    with pytest.raises(ValueError, match="Sequential composition"):
        deeplift(Doubled().eval(), torch.randn(1, 1, 5, 5), 0)
