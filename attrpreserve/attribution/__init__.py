"""Attribution maps: differentiable training-time maps (ours) and evaluation methods (libraries')."""

from attrpreserve.attribution.capture import capture_features
from attrpreserve.attribution.deeplift import deeplift
from attrpreserve.attribution.methods import (
    METHODS,
    attribute,
    attribution_scope,
    predict_and_attribute,
    register_layer_method,
    register_method,
)
from attrpreserve.attribution.maps import (
    channel_keep_mask,
    channel_weights,
    ewa_map,
    feature_grads,
    sswa_map,
    swa_map,
    target_scores,
)
from attrpreserve.losses import matching_loss

__all__ = [
    "METHODS", "attribute", "attribution_scope", "capture_features", "channel_keep_mask", "channel_weights",
    "deeplift", "ewa_map", "feature_grads", "matching_loss", "predict_and_attribute", "register_layer_method",
    "register_method", "sswa_map", "swa_map", "target_scores",
]
