"""Deletion and insertion curves: hand-worked scores, pixel orders, and the evaluate switch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attrpreserve.attribution.methods import METHODS, MethodSpec
from attrpreserve.evaluate import evaluate, format_table
from attrpreserve.evaluation.faithfulness import (
    curve_auc, faithfulness_aucs, perturbation_scores, pixel_order,
)


class RegionLogit(nn.Module):
    """Logit of class 0 = 8 x (mean of channel 0 over the top-left 2x2 block of a 4x4 image) - 4;
    class 1 = the same for the bottom-right block."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x[:, 0, :2, :2].mean(dim=(1, 2))
        bottom = x[:, 0, 2:, 2:].mean(dim=(1, 2))
        return torch.stack([8 * top - 4, 8 * bottom - 4], dim=1) * self.scale


def _block(rows: slice, cols: slice) -> torch.Tensor:
    out = torch.zeros(4, 4)
    out[rows, cols] = 1.0
    return out


def test_deletion_and_insertion_scores_by_hand():
    images = torch.ones(1, 3, 4, 4)
    region = _block(slice(0, 2), slice(0, 2))[None]
    rank = pixel_order(region + 0.01 * torch.arange(16.0).flip(0).reshape(1, 4, 4))  # region first, then row-major
    deletion = perturbation_scores(RegionLogit(), images, torch.tensor([0]), rank, steps=8, mode="deletion")
    # stages remove 0, 2, 4, ... pixels; the block's pixels 0, 1, 4, 5 go first (2 per stage):
    # means 1, 0.5, 0 -> logits 4, 0, -4, then -4
    expected = torch.sigmoid(torch.tensor([4.0, 0.0] + [-4.0] * 7))
    assert torch.allclose(deletion[0], expected)
    insertion = perturbation_scores(RegionLogit(), images, torch.tensor([0]), rank, steps=8, mode="insertion")
    assert torch.allclose(insertion[0], torch.sigmoid(torch.tensor([-4.0, 0.0] + [4.0] * 7)))
    # the trapezoid over 8 stages of 1/8
    assert curve_auc(deletion)[0] == pytest.approx(float((expected[:-1] + expected[1:]).sum() / 16))


def test_faithful_map_beats_the_wrong_map_and_random_order():
    images = torch.ones(2, 3, 4, 4)
    classes = torch.tensor([0, 1])
    right = torch.stack([_block(slice(0, 2), slice(0, 2)), _block(slice(2, 4), slice(2, 4))])
    wrong = 1 - right  # the block last
    good = faithfulness_aucs(RegionLogit(), images, classes, right, steps=16)
    bad = faithfulness_aucs(RegionLogit(), images, classes, wrong, steps=16)
    seeded = torch.Generator().manual_seed(0)
    rand = faithfulness_aucs(RegionLogit(), images, classes, right, steps=16, generator=seeded)
    assert bool((good["deletion"] < rand["deletion"]).all()) and bool((rand["deletion"] < bad["deletion"]).all())
    assert bool((good["insertion"] > rand["insertion"]).all()) and bool((rand["insertion"] > bad["insertion"]).all())
    again = faithfulness_aucs(RegionLogit(), images, classes, right, steps=16,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(rand["deletion"], again["deletion"])  # seeded


def test_pixel_order_ties_and_errors():
    assert pixel_order(torch.zeros(1, 2, 2)).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="mode"):
        perturbation_scores(RegionLogit(), torch.ones(1, 3, 4, 4), torch.tensor([0]), pixel_order(torch.zeros(1, 4, 4)),
                            mode="erase")
    with pytest.raises(ValueError, match="steps"):
        perturbation_scores(RegionLogit(), torch.ones(1, 3, 4, 4), torch.tensor([0]), pixel_order(torch.zeros(1, 4, 4)),
                            steps=0)


def _channel(model, images, image_index, classes, *, layer=None):
    return images[image_index, 1 + classes]  # channels 1 and 2 carry the maps


def test_evaluate_faithfulness_switch(monkeypatch):
    monkeypatch.setitem(METHODS, "channel", MethodSpec(_channel))
    images = torch.ones(2, 3, 4, 4)
    images[0, 1] = _block(slice(0, 2), slice(0, 2))  # image 0, class 0: the right block
    images[1, 2] = _block(slice(0, 2), slice(0, 2))  # image 1, class 1: the wrong block
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    masks[1, 2:, 2:] = 2
    batch = {"image": images, "mask": masks, "labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    result = evaluate(RegionLogit(), [batch], "channel", "all", progress=False, faithfulness=True,
                      faithfulness_steps=16)
    entry = result["methods"]["channel"]
    direct = [faithfulness_aucs(RegionLogit(), images[i:i + 1], torch.tensor([i]),
                                images[i:i + 1, 1 + i] / images[i, 1 + i].max(), steps=16) for i in range(2)]
    for mode in ("deletion", "insertion"):
        assert entry[mode] == pytest.approx(float(sum(d[mode][0] for d in direct) / 2), abs=1e-6)
    random = result["faithfulness"]["random"]
    assert 0 < random["deletion"] < 1 and 0 < random["insertion"] < 1
    assert not math.isnan(result["baselines"]["center"]["deletion"])
    assert "deletion" in format_table(result, plain=True) and "random order" in format_table(result, plain=True)
    off = evaluate(RegionLogit(), [batch], "channel", "all", progress=False)
    assert math.isnan(off["methods"]["channel"]["deletion"]) and "faithfulness" not in off


class Counting(nn.Module):
    """A small conv classifier that counts the images it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, 3))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.net(x)


def _naive_curve(model, image, cls, rank, steps, mode, baseline=0.0):
    """One forward per stage, the image built pixel by pixel: the definition, without shortcuts."""
    h, w = image.shape[-2:]
    scores = []
    for s in range(steps + 1):
        k = round(s * h * w / steps)
        x = image.clone() if mode == "deletion" else torch.full_like(image, baseline)
        for pixel in range(h * w):
            if rank[pixel] < k:
                x[:, pixel // w, pixel % w] = baseline if mode == "deletion" else image[:, pixel // w, pixel % w]
        with torch.no_grad():
            scores.append(torch.sigmoid(model(x[None])[0, cls]))
    return torch.stack(scores)


def test_curves_equal_the_definition_with_shared_end_stages():
    model = Counting().eval()
    images = torch.randn(3, 3, 5, 5)
    classes = torch.tensor([2, 0, 1])
    rank = pixel_order(torch.rand(3, 5, 5))
    steps = 6
    for mode in ("deletion", "insertion"):
        model.seen = 0
        scores = perturbation_scores(model, images, classes, rank, steps=steps, mode=mode, baseline=-0.5, chunk=4)
        assert model.seen == 3 * (steps - 1) + 3 + 1  # inner stages per row, the whole images, one blank image
        for i in range(3):
            expected = _naive_curve(model, images[i], int(classes[i]), rank[i], steps, mode, baseline=-0.5)
            torch.testing.assert_close(scores[i], expected, atol=1e-6, rtol=1e-5)


def test_random_order_is_drawn_per_image_and_shared_by_its_pairs():
    model = Counting().eval()
    images = torch.randn(2, 3, 4, 4)
    image_index, classes = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])  # image 0 has two pairs
    steps = 4
    model.seen = 0
    aucs = faithfulness_aucs(model, images, classes, torch.zeros(3, 4, 4), steps=steps, image_index=image_index,
                             generator=torch.Generator().manual_seed(7))
    assert model.seen == 2 * (2 * (steps - 1) + 1) + 1  # two images, not three pairs
    rank = pixel_order(images[:, 0], torch.Generator().manual_seed(7))  # one draw per image
    for pair in range(3):
        i, c = int(image_index[pair]), int(classes[pair])
        for mode in ("deletion", "insertion"):
            expected = curve_auc(_naive_curve(model, images[i], c, rank[i], steps, mode)[None])[0]
            assert float(aucs[mode][pair]) == pytest.approx(float(expected), abs=1e-6)
    # the map's order stays per pair: both pairs of image 0 follow their own maps
    maps = torch.rand(3, 4, 4)
    by_index = faithfulness_aucs(model, images, classes, maps, steps=steps, image_index=image_index)
    per_pair = faithfulness_aucs(model, images[image_index], classes, maps, steps=steps)
    for mode in ("deletion", "insertion"):
        torch.testing.assert_close(by_index[mode], per_pair[mode])
    none = faithfulness_aucs(model, images, classes[:0], maps[:0], steps=steps, image_index=image_index[:0])
    assert none["deletion"].shape == (0,) and none["insertion"].shape == (0,)  # no pairs: no curves, no error
