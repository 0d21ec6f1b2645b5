"""The map the matching loss compares, the map a panel shows and the map `evaluate` scores are
the same map (same model, images, class and layer), up to the shared upsampling and min-max."""

from __future__ import annotations

import pytest
import torch

from attrpreserve.attribution.capture import capture_features
from attrpreserve.attribution.maps import ewa_map, feature_grads, swa_map
from attrpreserve.attribution.methods import attribute, minmax, predict_and_attribute, upsample
from attrpreserve.callbacks import AttributionPanels
from attrpreserve.evaluate import PROTOCOLS
from attrpreserve.models import vgg_small
from attrpreserve.modules import DistillationModule


def _training_map(net, images, classes, layer, mode):
    """As the matching loss builds it (the teacher's way: gradient from the layer on; no graph kept)."""
    name = net.attribution_layers[layer]
    with torch.enable_grad(), capture_features(net.eval(), [name], cut_graph=True) as feats:
        logits = net(images)
        feature = feats[name]
        heat = ewa_map(feature) if mode == "ewa" else swa_map(feature, feature_grads(logits, feature, classes))
    return heat[:, 0].detach()


@pytest.mark.parametrize("mode", ["swa", "ewa"])
@pytest.mark.parametrize("layer", ["pool5", "conv5_3"])
def test_training_panel_and_evaluation_maps_are_equal(mode, layer):
    torch.manual_seed(0)
    teacher, student = vgg_small(num_classes=3), vgg_small(num_classes=3, width_divisor=8)
    module = DistillationModule(teacher, student)
    images = torch.randn(4, 3, 64, 64)
    classes = teacher.eval()(images).argmax(dim=1)

    panels = AttributionPanels(num_images=4, layer=layer, mode=mode)
    panel_maps, panel_classes = panels._maps_and_classes(module, images)
    assert torch.equal(panel_classes, classes)  # rows explain the teacher's top-1 class
    for name, net in (("teacher", teacher), ("student", student)):
        training = upsample(_training_map(net, images, classes, layer, mode).clamp(min=0), (64, 64))
        evaluation = attribute(net, images, classes, mode, layer=layer)
        torch.testing.assert_close(panel_maps[name], training, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(evaluation, training, rtol=1e-5, atol=1e-6)
        # evaluate() takes its first layer method from the prediction's own forward, min-max normalised
        _, _, _, scored = predict_and_attribute(net, images, lambda z: (torch.arange(4), classes), mode,
                                                layer=layer, normalize=True)
        torch.testing.assert_close(scored, minmax(training), rtol=1e-5, atol=1e-5)
    assert "all" in PROTOCOLS
