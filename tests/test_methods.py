"""Attribution methods: batched pairs equal single pairs, independent oracles, conservation, state."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrpreserve.attribution.methods import (
    METHODS,
    attribute,
    predict_and_attribute,
    register_layer_method,
    register_method,
)
from attrpreserve.models import vgg_small

IMAGE_INDEX = torch.tensor([0, 0, 1, 2, 2, 2])
CLASSES = torch.tensor([1, 3, 0, 2, 1, 0])
KNOBS = {"ig": {"n_steps": 4}}


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        model.classifier[1].weight.normal_(0, 0.1, generator=gen)
        model.classifier[1].bias.normal_(0, 0.1, generator=gen)
    return model


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(vgg_small(num_classes=4, width_divisor=8), 1).double().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _per_pair(model, images, method, **knobs):
    return torch.stack([
        attribute(model, images[i:i + 1], CLASSES[n:n + 1], method, **knobs)[0]
        for n, i in enumerate(IMAGE_INDEX.tolist())
    ])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_pairs_equal_single_pairs(net, images, method):
    knobs = KNOBS.get(method, {})
    batched = attribute(net, images, CLASSES, method, image_index=IMAGE_INDEX, **knobs)
    assert batched.shape == (6, 32, 32) and batched.dtype == torch.float64 and not batched.requires_grad
    assert batched.abs().max() > 0
    torch.testing.assert_close(batched, _per_pair(net, images, method, **knobs), rtol=1e-9, atol=1e-12)


def test_captum_deeplift_backend_batched_equals_single(net, images):
    batched = attribute(net, images, CLASSES, "deeplift", image_index=IMAGE_INDEX, backend="captum")
    torch.testing.assert_close(batched, _per_pair(net, images, "deeplift", backend="captum"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["gradcam", "swa", "ewa", "lrp"])
def test_predict_and_attribute_equals_attribute(net, images, method):
    def select(logits):
        assert logits.shape == (3, 4)
        return IMAGE_INDEX, CLASSES

    logits, index, classes, maps = predict_and_attribute(net, images, select, method, normalize=True)
    torch.testing.assert_close(logits, net(images).detach())
    assert torch.equal(index, IMAGE_INDEX) and torch.equal(classes, CLASSES)
    torch.testing.assert_close(maps, attribute(net, images, CLASSES, method, image_index=IMAGE_INDEX, normalize=True))


def test_predict_and_attribute_with_no_pairs(net, images):
    empty = torch.zeros(0, dtype=torch.long)
    logits, index, classes, maps = predict_and_attribute(net, images, lambda z: (empty, empty))
    assert logits.shape == (3, 4) and maps.shape == (0, 32, 32) and index.numel() == classes.numel() == 0


@pytest.mark.parametrize("layer", ["conv5_3", "pool5", "conv2_1"])
def test_gradcam_equals_independent_backward(net, images, layer):
    """Grad-CAM by hand: a forward hook keeps the layer output, ``.backward()`` on one logit."""
    module = net.get_submodule(net.attribution_layers[layer])
    expected = []
    for n, i in enumerate(IMAGE_INDEX.tolist()):
        store = {}
        handle = module.register_forward_hook(lambda _m, _i, out: store.update(a=out) or out.retain_grad())
        x = images[i:i + 1].clone().requires_grad_(True)
        net(x)[0, CLASSES[n]].backward()
        handle.remove()
        a, g = store["a"], store["a"].grad
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        expected.append(F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[0, 0].detach())
    net.zero_grad(set_to_none=True)
    got = attribute(net, images, CLASSES, "gradcam", image_index=IMAGE_INDEX, layer=layer)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-9, atol=1e-12)


def test_gradcam_default_layer_is_conv5_3_and_relu_flag(net, images):
    default = attribute(net, images, CLASSES, image_index=IMAGE_INDEX)
    torch.testing.assert_close(default, attribute(net, images, CLASSES, image_index=IMAGE_INDEX, layer="conv5_3"))
    signed = attribute(net, images, CLASSES, image_index=IMAGE_INDEX, relu=False)
    assert (signed < 0).any() and (default >= 0).all()
    normalized = attribute(net, images, CLASSES, image_index=IMAGE_INDEX, normalize=True, relu=False)
    assert torch.allclose(normalized.amax(dim=(1, 2)), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(normalized.amin(dim=(1, 2)), torch.zeros(6, dtype=torch.float64))


def test_swa_and_ewa_follow_maps_py(net, images):
    from attrpreserve.attribution.capture import capture_features
    from attrpreserve.attribution.maps import ewa_map, feature_grads, swa_map

    with capture_features(net, ["pool5"]) as feats:
        logits = net(images[IMAGE_INDEX])
    grads = feature_grads(logits, feats["pool5"], CLASSES)
    expected_swa = F.interpolate(swa_map(feats["pool5"], grads), size=(32, 32), mode="bilinear", align_corners=False)
    got = attribute(net, images, CLASSES, "swa", image_index=IMAGE_INDEX)
    torch.testing.assert_close(got, expected_swa[:, 0].detach(), rtol=1e-9, atol=1e-12)
    ewa = attribute(net, images, CLASSES, "ewa", image_index=IMAGE_INDEX)
    expected_ewa = F.interpolate(ewa_map(feats["pool5"]), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ewa, expected_ewa[:, 0].detach())
    assert torch.equal(ewa[0], ewa[1])  # class-independent


def _bias_free(seed: int) -> nn.Module:
    """BN with random scales but zero shift, zero conv/linear biases: LRP's bias absorption vanishes."""
    torch.manual_seed(seed)
    model = _randomise_bn(vgg_small(num_classes=4, width_divisor=8), seed).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    return model


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_plus", "alpha1_beta0"])
def test_lrp_conserves_the_target_logit(images, composite):
    """With every bias zero (after zennit merges BN into the convs) the z+/epsilon/flat rules
    redistribute exactly what they receive; only the stabilisers (1e-12 here, in float64) leak,
    so the input relevance sums to the target logit to ~1e-10 relative. rtol 1e-6 leaves margin
    while a leak of any bias share (percent level, see the last assert) fails."""
    model = _bias_free(3)
    logits = model(images).detach()[IMAGE_INDEX, CLASSES]
    relevance = attribute(model, images, CLASSES, "lrp", image_index=IMAGE_INDEX, composite=composite,
                          epsilon=1e-12, stabilizer=1e-12)
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), logits, rtol=1e-6, atol=0)
    ones = attribute(model, images, CLASSES, "lrp", image_index=IMAGE_INDEX, composite=composite,
                     epsilon=1e-12, stabilizer=1e-12, relevance="one")
    torch.testing.assert_close(ones.sum(dim=(1, 2)), torch.ones(6, dtype=torch.float64), rtol=1e-6, atol=0)
    with_bias = _randomise_bn(vgg_small(num_classes=4, width_divisor=8), 4).double().eval()
    leaked = attribute(with_bias, images, CLASSES, "lrp", image_index=IMAGE_INDEX, composite=composite,
                       epsilon=1e-12, stabilizer=1e-12).sum(dim=(1, 2))
    assert (leaked - with_bias(images).detach()[IMAGE_INDEX, CLASSES]).abs().max() > 1e-3


def test_ebp_conserves_the_one_hot_signal(images):
    relevance = attribute(_bias_free(5), images, CLASSES, "ebp", image_index=IMAGE_INDEX, stabilizer=1e-12)
    torch.testing.assert_close(relevance.sum(dim=(1, 2)), torch.ones(6, dtype=torch.float64), rtol=1e-6, atol=0)


def test_lrp_composites_differ(net, images):
    maps = {c: attribute(net, images, CLASSES, "lrp", image_index=IMAGE_INDEX, composite=c)
            for c in ("epsilon_plus_flat", "epsilon_plus", "alpha1_beta0")}
    assert not torch.allclose(maps["epsilon_plus_flat"], maps["epsilon_plus"])
    assert not torch.allclose(maps["epsilon_plus"], maps["alpha1_beta0"])


@pytest.mark.parametrize("method", ["deeplift", "deeplift_rc"])
def test_deeplift_completeness(net, images, method):
    """Summation-to-delta: attributions sum to f(x) - f(0) for the target (BN shifts and biases on)."""
    with torch.no_grad():
        delta = (net(images) - net(torch.zeros_like(images)))[IMAGE_INDEX, CLASSES]
    assert delta.abs().min() > 1e-4
    got = attribute(net, images, CLASSES, method, image_index=IMAGE_INDEX, internal_batch_size=4)
    torch.testing.assert_close(got.sum(dim=(1, 2)), delta, rtol=1e-6, atol=1e-9)


def test_captum_deeplift_backend_complete_where_captum_is_exact(images):
    """captum's DeepLift is exact when no ReLU touches a MaxPool; VGG blocks do (see the method doc)."""
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
        nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 3),
    ).double().eval()
    classes = torch.tensor([0, 2, 1])
    with torch.no_grad():
        delta = (model(images) - model(torch.zeros_like(images))).gather(1, classes[:, None])[:, 0]
    got = attribute(model, images, classes, "deeplift", backend="captum")
    torch.testing.assert_close(got.sum(dim=(1, 2)), delta, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got, attribute(model, images, classes, "deeplift"), rtol=1e-6, atol=1e-9)


def test_unknown_method_layer_and_knob_raise_listing_valid_names(net, images):
    with pytest.raises(ValueError, match="gradcam.*lrp|lrp.*gradcam"):
        attribute(net, images, [0, 1, 2], "gradcamm")
    with pytest.raises(ValueError, match="conv5_3.*pool5|pool5.*conv5_3"):
        attribute(net, images, [0, 1, 2], "gradcam", layer="conv9_9")
    with pytest.raises(ValueError, match="n_steps"):
        attribute(net, images, [0, 1, 2], "ig", steps=3)
    with pytest.raises(ValueError, match="`layer` to be None"):
        attribute(net, images, [0, 1, 2], "lrp", layer="pool5")
    with pytest.raises(ValueError, match="composite"):
        attribute(net, images, [0, 1, 2], "lrp", composite="alpha2_beta1")
    with pytest.raises(ValueError, match="backend"):
        attribute(net, images, [0, 1, 2], "deeplift", backend="shap")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(3, 32, 32)}, "`images`"),
        ({"classes": [0, 1]}, "one class per image"),
        ({"classes": torch.tensor([0.0, 1.0, 2.0])}, "integer"),
        ({"classes": [0, 1, 4]}, r"\[0, 4\)"),
        ({"classes": [0, -1, 2]}, ">= 0"),
        ({"classes": [0, 1], "image_index": [0, 3]}, r"image_index.*\[0, 3\)"),
        ({"classes": [0, 1], "image_index": [0]}, "same length"),
        ({"relu": 1}, "`relu`"),
        ({"normalize": None}, "`normalize`"),
    ],
)
def test_bad_inputs_raise_value_error(net, images, kwargs, match):
    call = {"images": images, "classes": [0, 1, 2], **kwargs}
    with pytest.raises(ValueError, match=match):
        attribute(net, call.pop("images"), call.pop("classes"), "gradcam", **call)


def test_unsupported_models_raise_clear_errors(images):
    bn_after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                                  nn.Linear(4 * 30 * 30, 2)).double()
    with pytest.raises(ValueError, match="BatchNorm right after a conv/linear"):
        attribute(bn_after_relu, images, [0, 1, 0], "lrp")
    layer_norm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)).double()
    with pytest.raises(ValueError, match="GroupNorm"):
        attribute(layer_norm, images, [0, 1, 0], "ebp")
    gelu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)).double()
    with pytest.raises(ValueError, match="GELU"):
        attribute(gelu, images, [0, 1, 0], "deeplift", backend="captum")
    with pytest.raises(ValueError, match="GELU"):
        attribute(gelu, images, [0, 1, 0], "deeplift")


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_state_restored(method, images):
    torch.manual_seed(7)
    model = _randomise_bn(vgg_small(num_classes=4, width_divisor=8), 8).double().train()
    model.features[0].weight.requires_grad_(False)
    model.classifier[0].eval()  # a mixed train/eval state must come back as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    eps = [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = _hooks(model)
    maps = attribute(model, images, CLASSES, method, image_index=IMAGE_INDEX, **KNOBS.get(method, {}))
    assert maps.shape == (6, 32, 32)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert _hooks(model) == hooks
    assert [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == eps
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), key  # BN statistics and merged weights restored bitwise


@pytest.mark.parametrize("method", ["gradcam", "lrp", "ig"])
def test_works_inside_inference_mode(net, images, method):
    expected = attribute(net, images, CLASSES, method, image_index=IMAGE_INDEX, **KNOBS.get(method, {}))
    with torch.inference_mode():
        got = attribute(net, images.clone(), CLASSES, method, image_index=IMAGE_INDEX, **KNOBS.get(method, {}))
    torch.testing.assert_close(got, expected)


def test_registry_and_custom_methods(net, images, monkeypatch):
    monkeypatch.setattr("attrpreserve.attribution.registry.METHODS", dict(METHODS))
    from attrpreserve.attribution import registry

    with pytest.raises(ValueError, match="already|registered"):
        register_method("gradcam", lambda *a, **k: None)
    register_method("first_channel", lambda model, images, image_index, classes, *, layer=None:
                    images[image_index, 0] * (classes[:, None, None] + 1))
    got = attribute(net, images, CLASSES, "first_channel", image_index=IMAGE_INDEX)
    torch.testing.assert_close(got, images[IMAGE_INDEX, 0] * (CLASSES[:, None, None] + 1))
    register_layer_method("act_sum", lambda a, g: a.sum(dim=1), needs_grad=False, default_layer="conv5_3")
    assert "act_sum" in registry.METHODS and registry.METHODS["act_sum"].layer_rule is not None
    with pytest.raises(ValueError, match="return"):
        register_method("bad", lambda model, images, image_index, classes, *, layer=None: images[:, 0, 0])
        attribute(net, images, CLASSES, "bad", image_index=IMAGE_INDEX)


def test_attribution_scope_turns_grad_on_and_eval_scope_is_a_deprecated_alias(monkeypatch):
    from attrpreserve.attribution import methods

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    with torch.no_grad(), methods.attribution_scope(net):
        assert torch.is_grad_enabled() and not net.training and not net[0].weight.requires_grad
    assert net.training and net[0].weight.requires_grad
    monkeypatch.setattr(methods, "_EVAL_SCOPE_WARNED", False)
    with pytest.warns(DeprecationWarning, match="attribution_scope"):
        with methods.eval_scope(net):
            assert torch.is_grad_enabled() and not net.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        with methods.eval_scope(net):
            pass
    assert net.training


class _Twice(nn.Module):
    """Runs its ReLU twice per forward; a layer method cannot attribute to it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.act(self.act(self.conv(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "ewa"])
def test_layer_methods_reject_layers_that_run_twice_or_never(method, images):
    net = _Twice().double()
    with pytest.raises(ValueError, match="more than once"):
        attribute(net, images, [0, 1, 0], method, layer="act")
    unused = nn.ModuleDict({"used": nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                                  nn.Flatten(), nn.Linear(2, 2)), "spare": nn.ReLU()}).double()
    unused.forward = unused["used"].forward
    with pytest.raises(ValueError, match="did not run"):
        attribute(unused, images, [0, 1, 0], method, layer="spare")
