"""KD and matching losses against hand-written formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from attrpreserve.losses import matching_loss, multilabel_kd_loss, softmax_kd_loss


def test_multilabel_kd_matches_two_way_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, generator=g) * 3, torch.randn(3, 5, generator=g) * 3
    T = 4.0
    total = 0.0
    for i in range(3):
        for k in range(5):
            pt = 1 / (1 + math.exp(-t[i, k].item() / T))
            ps = 1 / (1 + math.exp(-s[i, k].item() / T))
            total += pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    assert multilabel_kd_loss(s, t, T).item() == pytest.approx(total / 15 * T**2, rel=1e-5)


def test_multilabel_kd_is_finite_for_extreme_logits():
    s = torch.tensor([[-500.0, 500.0]], requires_grad=True)
    loss = multilabel_kd_loss(s, torch.tensor([[500.0, -500.0]]), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_softmax_kd_matches_definition():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    T = 2.0
    p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean() * T**2
    torch.testing.assert_close(softmax_kd_loss(s, t, T), expected)


def test_kd_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        multilabel_kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_matching_loss_hand_case_and_resize():
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    s = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    # normalised maps differ by +-1 at two of four positions: (1 + 1) / 4
    assert matching_loss(s, t).item() == pytest.approx(0.5)
    big = torch.ones(1, 1, 4, 4)
    assert matching_loss(big, torch.ones(1, 1, 2, 2)).item() == pytest.approx(0.0, abs=1e-12)


def test_matching_loss_zero_maps_no_nan():
    s = torch.zeros(2, 1, 3, 3, requires_grad=True)
    loss = matching_loss(s, torch.zeros(2, 1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_matching_loss_gives_no_gradient_to_teacher():
    t = torch.rand(2, 1, 3, 3, requires_grad=True)
    s = torch.rand(2, 1, 3, 3, requires_grad=True)
    matching_loss(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
