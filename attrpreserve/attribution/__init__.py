"""Attribution maps: differentiable training-time maps (ours) and evaluation methods (libraries').

One core for training, panels and evaluation:

- ``capture``: feature capture by layer name (``cut_graph`` for a gradient from the layer on);
- ``maps``: the channel-collapse maps ``ewa``/``swa``/``sswa`` (``[B, 1, h, w]``, differentiable);
- ``methods``: the public API, ``attribute``/``predict_and_attribute`` (``[N, H, W]`` maps, the
  shape convention in its docstring), ``upsample``, ``minmax``, ``attribution_scope``;
- ``registry``: ``MethodSpec``, ``register_method``, ``get_method``, ``method_knobs``,
  ``check_method``, ``METHODS``;
- ``layer_methods``: the layer-method engine (Grad-CAM, SWA, EWA; ``register_layer_method``);
- ``captum_methods``, ``zennit_methods``: one adapter per backend (IG, InputXGradient, captum's
  DeepLIFT; LRP, Excitation Backprop);
- our own rules: ``deeplift`` (rescale, reveal-cancel), ``rap``; ``baselines`` (``center``).
"""

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
