"""Training-time maps checked against independent computations."""

import pytest
import torch
from torch import nn

from attrpreserve.attribution import (
    capture_features,
    channel_keep_mask,
    ewa_map,
    feature_grads,
    sswa_map,
    swa_map,
)
from attrpreserve.models import vgg_small


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return vgg_small(num_classes=3, width_divisor=8).double().eval()


def test_ewa_map_is_channel_mean_of_squares():
    feats = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(2, 1, 3, 4)
    for b in range(2):
        for c in range(5):
            expected[b, 0] += feats[b, c] ** 2 / 5
    torch.testing.assert_close(ewa_map(feats), expected)


def test_swa_map_equals_gradcam_from_plain_backward():
    model = _tiny_model()
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([0, 2, 1])
    # Ours: one autograd.grad w.r.t. the captured features for the whole batch.
    with capture_features(model, ["pool5"]) as feats:
        logits = model(images)
    grads = feature_grads(logits, feats["pool5"], classes)
    ours = swa_map(feats["pool5"], grads)
    # Independent: per image, a retained-grad hook and a full .backward(), then the formula.
    for b in range(3):
        store = {}
        handle = model.features[14].register_forward_hook(lambda m, i, o: store.update(a=o))
        out = model(images[b : b + 1])
        handle.remove()
        store["a"].retain_grad()
        out[0, classes[b]].backward()
        a, g = store["a"][0].detach(), store["a"].grad[0]
        cam = torch.relu((g.sum(dim=(1, 2))[:, None, None] * a).sum(0))
        torch.testing.assert_close(ours[b, 0], cam)


def test_sswa_without_drop_equals_swa():
    feats, grads = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(sswa_map(feats, grads, 0.0), swa_map(feats, grads))


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("channels,p", [(8, 0.3), (512, 0.3), (10, 0.55)])
def test_sswa_drops_exactly_int_c_times_p_channels(channels, p, per_sample):
    keep = channel_keep_mask(channels, p, batch_size=4, per_sample=per_sample,
                             generator=torch.Generator().manual_seed(0))
    assert keep.shape == (4 if per_sample else 1, channels, 1, 1)
    assert torch.all((keep == 0).sum(dim=1) == int(channels * p))
    # The map equals SWA restricted to the kept channels (same generator state).
    feats, grads = torch.randn(4, channels, 3, 3), torch.randn(4, channels, 3, 3)
    got = sswa_map(feats, grads, p, generator=torch.Generator().manual_seed(0), per_sample=per_sample)
    w = grads.sum(dim=(2, 3), keepdim=True) * keep
    torch.testing.assert_close(got, torch.relu((w * feats).sum(1, keepdim=True)))


def test_sswa_shared_subset_differs_between_calls_but_is_seeded():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a1, a2 = channel_keep_mask(16, 0.5, generator=g1), channel_keep_mask(16, 0.5, generator=g1)
    assert not torch.equal(a1, a2)
    assert torch.equal(a1, channel_keep_mask(16, 0.5, generator=g2))


def test_drop_prob_out_of_range_raises():
    with pytest.raises(ValueError, match="drop_prob"):
        sswa_map(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2), 1.0)


def test_student_map_is_differentiable_through_its_gradient():
    """Double backprop is real: with the features detached, the matching loss still reaches
    the classifier weights, through d logit / d features."""
    from attrpreserve.losses import matching_loss

    model = vgg_small(num_classes=3, width_divisor=8)
    images = torch.randn(2, 3, 64, 64)
    with capture_features(model, ["pool5"]) as feats:
        logits = model(images)
    feat = feats["pool5"]
    grads = feature_grads(logits, feat, torch.tensor([0, 1]), create_graph=True)
    student_map = swa_map(feat.detach(), grads)
    teacher_map = torch.rand(2, 1, 8, 8)
    matching_loss(student_map, teacher_map).backward()
    head = model.classifier[1].weight.grad
    assert head is not None and head.abs().sum() > 0
    # ... and not the convolutions: for a linear head the gradient does not depend on them.
    conv = model.features[0].weight.grad
    assert conv is None or conv.abs().sum() == 0


def test_capture_with_cut_graph_records_nothing_before_the_layer():
    model = vgg_small(num_classes=3, width_divisor=8).requires_grad_(False)
    with torch.enable_grad(), capture_features(model, ["pool5"], cut_graph=True) as feats:
        logits = model(torch.randn(2, 3, 64, 64))
    feat = feats["pool5"]
    assert feat.is_leaf and feat.requires_grad and feat.grad_fn is None
    assert logits.requires_grad  # the head after the layer is recorded
    grads = feature_grads(logits, feat, torch.tensor([0, 1]))
    assert grads.shape == feat.shape
    # hooks are removed after the block
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match="pool5"):
        with capture_features(vgg_small(), ["pool9"]):
            pass
