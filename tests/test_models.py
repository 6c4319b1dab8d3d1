"""Every registered model builds, fits its kind of input and honours norm="gn"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mia.errors import MiaError
from mia.models import MODELS, build_model, model_spec

#: (name, input shape) pairs covering every registered model on its kind of data.
CASES = [(name, (3, 32, 32)) for name, spec in MODELS.items() if "image" in spec.kinds]
CASES += [("resnet18", (3, 64, 64)), ("mlp", (1, 8, 8)), ("cnn-small", (1, 8, 8)),
          ("fc", (600,)), ("mlp", (600,))]


def test_registry_has_the_design_names():
    assert {"resnet18", "wrn28-2", "vgg16", "densenet121", "alexnet", "fc", "mlp", "cnn-small"} <= set(MODELS)
    assert {name for name, _ in CASES} == set(MODELS)


@pytest.mark.parametrize("name,shape", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_output_shape(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(n for n, s in MODELS.items() if "image" in s.kinds))
def test_group_norm_replaces_batch_norm(name):
    bn = build_model(name, (3, 32, 32), 10, norm="bn")
    gn = build_model(name, (3, 32, 32), 10, norm="gn")
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bn.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gn.modules())
    if n_bn == 0:  # a model without normalization (alexnet, cnn-small, mlp): norm changes nothing
        assert {k: v.shape for k, v in bn.state_dict().items()} == {k: v.shape for k, v in gn.state_dict().items()}
        return
    # one GroupNorm per BatchNorm (nn.GroupNorm itself checks that its groups divide the channels)
    assert sum(isinstance(m, nn.GroupNorm) for m in gn.modules()) == n_bn


def test_resnet18_is_cifar_style():
    model = build_model("resnet18", (3, 32, 32), 10)
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


def test_wrn_pattern_resolves():
    model = build_model("wrn16-4", (3, 32, 32), 10)
    assert model.fc.in_features == 64 * 4
    assert len(model.blocks) == 3 * (16 - 4) // 6
    assert model_spec("wrn28-10").name == "wrn28-10"
    assert 1.4e6 < sum(p.numel() for p in build_model("wrn28-2", (3, 32, 32), 10).parameters()) < 1.5e6


@pytest.mark.parametrize("name", ["wrn27-2", "wrn4-2", "wrn28-0"])
def test_wrn_bad_depth_or_width(name):
    with pytest.raises(MiaError, match="6n\\+4"):
        build_model(name, (3, 32, 32), 10)


def test_unknown_model_lists_known_ones():
    with pytest.raises(MiaError, match="unknown model 'resnet19'.*resnet18"):
        build_model("resnet19", (3, 32, 32), 10)


@pytest.mark.parametrize("name,shape,match", [
    ("fc", (3, 32, 32), "takes tabular data"),
    ("resnet18", (600,), "takes image data"),
    ("vgg16", (1, 8, 8), "at least 32x32"),
    ("mlp", (4, 4), "neither an image"),
])
def test_model_that_does_not_fit_the_data(name, shape, match):
    with pytest.raises(MiaError, match=match):
        build_model(name, shape, 10)


def test_unknown_norm():
    with pytest.raises(MiaError, match="unknown norm 'ln'"):
        build_model("resnet18", (3, 32, 32), 10, norm="ln")


def test_error_messages_are_one_line():
    for args in [("nope", (3, 32, 32)), ("fc", (3, 32, 32)), ("wrn27-2", (3, 32, 32))]:
        with pytest.raises(MiaError) as err:
            build_model(*args, 10)
        assert "\n" not in str(err.value)
