"""Models: the paper's parameter counts, named layers, local weight files."""

import pytest
import torch
import torchvision

from attrpreserve.attribution import capture_features
from attrpreserve.models import CheckpointError, create_model, resolve_layer, vgg16, vgg_small


@pytest.mark.parametrize("divisor,millions", [(1, 15.2), (2, 3.9), (4, 1.0), (8, 0.29)])
def test_vgg16_parameter_counts_match_the_paper(divisor, millions):
    count = sum(p.numel() for p in vgg16(num_classes=20, width_divisor=divisor).parameters())
    assert round(count / 1e6, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("builder,size", [(vgg16, 64), (vgg_small, 64)])
def test_feature_info_names_modules_and_channels(builder, size):
    model = builder(num_classes=5, width_divisor=8).eval()
    modules = dict(model.named_modules())
    names = [info["name"] for info in model.feature_info]
    with torch.no_grad(), capture_features(model, names) as feats:
        model(torch.zeros(1, 3, size, size))
    for info in model.feature_info:
        assert info["module"] in modules
        assert feats[info["name"]].shape[1] == info["num_chs"]
        assert size // feats[info["name"]].shape[-1] == info["reduction"]
    assert isinstance(resolve_layer(model, "pool5"), torch.nn.MaxPool2d)
    assert isinstance(resolve_layer(model, "conv5_3"), torch.nn.ReLU)


def test_vgg16_pool5_is_7x7_at_227_and_conv5_3_14x14():
    model = vgg16(width_divisor=8).eval()
    with torch.no_grad(), capture_features(model, ["pool5", "conv5_3"]) as feats:
        model(torch.zeros(1, 3, 227, 227))
    assert feats["pool5"].shape[-2:] == (7, 7) and feats["conv5_3"].shape[-2:] == (14, 14)


def test_vgg_small_pool5_8x8_and_conv_16x16_at_64px():
    model = vgg_small().eval()
    with torch.no_grad(), capture_features(model, ["pool5", "conv5_3"]) as feats:
        model(torch.zeros(1, 3, 64, 64))
    assert feats["pool5"].shape[-2:] == (8, 8) and feats["conv5_3"].shape[-2:] == (16, 16)


@pytest.mark.parametrize("size, pool_runs", [(64, 0), (80, 1)])
def test_head_skips_the_pool_only_where_it_is_an_identity(size, pool_runs):
    # At 64 px pool3 is 8x8 = the pool's output: the head skips it (same logits, to the bit);
    # at 80 px (10x10) the pool averages and must run.
    torch.manual_seed(0)
    net = vgg_small(num_classes=3, width_divisor=8, head_pool=8).eval()
    calls = []
    net.avgpool.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = net.features(x)
        expected = net.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 8), 1))
        calls.clear()
        assert torch.equal(net(x), expected)
        assert len(calls) == pool_runs
        assert torch.equal(net.forward_from("pool5", features), expected)


def test_unknown_layer_lists_available_names():
    with pytest.raises(ValueError, match="conv5_3") as err:
        resolve_layer(vgg_small(), "fc7")
    assert "fc7" in str(err.value)


def test_loads_torchvision_vgg16_bn_state_dict_with_new_head(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.vgg16_bn()  # random weights: the format is what matters
    path = tmp_path / "vgg16_bn.pth"
    torch.save(tv.state_dict(), path)
    model = vgg16(num_classes=20, weights=path)
    for key, value in tv.state_dict().items():
        if key.startswith("features."):
            torch.testing.assert_close(model.state_dict()[key], value)
    assert model.classifier[-1].out_features == 20


def test_loads_our_teacher_checkpoint(tmp_path):
    from attrpreserve.modules import TeacherModule

    teacher = vgg_small(num_classes=3, width_divisor=4)
    module = TeacherModule(teacher)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = vgg_small(num_classes=3, width_divisor=4, weights=path)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_missing_weights_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        vgg16(weights=tmp_path / "nothing.pth")


def test_weights_of_another_width_name_file_and_expectation(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(vgg_small(width_divisor=1).state_dict(), path)
    with pytest.raises(CheckpointError, match="width_divisor") as err:
        vgg_small(width_divisor=8, weights=path)
    assert "wide.pth" in str(err.value)


def test_truncated_weights_file_names_the_file(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save(vgg_small(width_divisor=8).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        vgg_small(width_divisor=8, weights=path)


def test_create_model_rejects_unknown_names_and_drops_none():
    with pytest.raises(ValueError, match="vgg16, vgg_small"):
        create_model("resnet50")
    assert create_model("vgg_small", width_divisor=None).config["width_divisor"] == 1


@pytest.mark.parametrize("kwargs,match", [({"width_divisor": 3}, "width_divisor"), ({"num_classes": 0}, "num_classes"),
                                          ({"arch": "vgg19"}, "arch")])
def test_bad_model_arguments(kwargs, match):
    from attrpreserve.models import VGG

    with pytest.raises(ValueError, match=match):
        VGG(**kwargs)


@pytest.mark.parametrize("multiplier, divisor, expected", [(1, 8, [4, 8, 16, 16]), (2, 8, [8, 16, 32, 32]),
                                                           (2, 1, [64, 128, 256, 256])])
def test_width_multiplier_scales_every_conv_before_the_divisor(multiplier, divisor, expected):
    net = vgg_small(num_classes=3, width_divisor=divisor, width_multiplier=multiplier, head_pool=1)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == expected
    assert net.classifier[-1].in_features == expected[-1]
    assert net.config["width_multiplier"] == multiplier
    # the config rebuilds the same network (what a checkpoint's hyperparameters do)
    rebuilt = type(net)(**net.config)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_width_multiplier_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="width_multiplier"):
        vgg_small(width_multiplier=bad)


def test_torchvision_weight_names_are_listed_once():
    from attrpreserve.models.weights import torchvision_weight_names

    names = torchvision_weight_names("vgg16", True)
    assert "IMAGENET1K_V1" in names and "DEFAULT" in names and len(names) == len(set(names))
