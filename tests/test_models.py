"""Model zoo: published weight counts, shapes on small inputs, the classifier contract, option errors."""

import pytest
import torch
from torch import nn

from reparam.core.errors import ReparamError
from reparam.models import MODELS, FourierMLP, Normalize, build_model, model_options, register_model, replace_head

torch.set_num_threads(1)

# Inputs the data module produces: digits 1x8x8, Fashion-MNIST 1x28x28, CIFAR 3x32x32.
SHAPES = [(1, 8), (1, 28), (3, 32)]
# Every shape for one member of each family; big or redundant members (aliases, other depths) get one
# small shape and, where the width is an option, a reduced width: the file must stay fast on 2 cores.
ALL_SHAPES = {"mlp", "cnn", "lenet5", "resnet20", "wrn-10-4", "vgg11", "vgg16", "resnet18", "fourier-mlp"}
BIG = {"wrn-28-10", "wrn-16-8", "wrn-40-4", "wrn-28-5", "resnet110"}


def small_options(name: str) -> dict:
    if name.startswith(("resnet18", "resnet34", "resnet50", "vgg")):
        return {"width": 0.125}
    if name == "fourier-mlp":
        return {"width": 16, "depth": 2, "fourier": 8}
    return {}


def shapes_for(name: str):
    return SHAPES if name in ALL_SHAPES else SHAPES[:1]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count(name: str, num_classes: int, in_channels: int = 3, image_size=32, **options) -> int:
    model = build_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    return n_params(model)


# Determinism does not depend on size: skip the big members there.
CLASSIFIERS = sorted(n for n in MODELS if n != "fourier-mlp" and n not in BIG)


@pytest.mark.parametrize(
    "name, classes, expected",
    [
        ("resnet20", 10, 269_722),
        ("resnet20", 100, 275_572),
        ("resnet56", 10, 853_018),
        ("resnet56", 100, 858_868),
        ("wrn-28-10", 10, 36_479_194),
        ("wrn-16-4", 10, 2_748_890),
        ("lenet5", 10, 62_006),
    ],
)
def test_published_parameter_counts(name, classes, expected):
    assert count(name, classes) == expected


def test_torchvision_equal_counts_with_imagenet_stem():
    assert count("resnet18-imagenet", 100, image_size=224) == 11_227_812  # PRANC's ImageNet-100 R18
    assert count("resnet50", 1000, image_size=224, stem="imagenet") == 25_557_032


def test_lenet5_counts_follow_the_input_size():
    # 28x28 pads the first conv (MNIST variant): same flatten size as 32x32, one input channel fewer.
    assert count("lenet5", 10, in_channels=1, image_size=28) == 62_006 - 2 * 6 * 25
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=8)
    assert model.padding == (2, 2) and model.fc1.in_features == 16 * 2 * 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_and_classifier_contract(name):
    for channels, size in shapes_for(name):
        torch.manual_seed(0)
        model = build_model(name, num_classes=7, in_channels=channels, image_size=size, **small_options(name))
        if name == "fourier-mlp":
            out = model(model.coords(size, size))
            assert out.shape == (size * size, channels)
            continue
        x = torch.rand(2, channels, size, size)
        feats = model.features(x)
        assert isinstance(model.norm, Normalize) and isinstance(model.head, nn.Linear)
        assert feats.shape == (2, model.feature_dim) and model.head.in_features == model.feature_dim
        out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        assert torch.allclose(out, model.head(feats), atol=1e-5)  # train-mode BN: same batch, same stats


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_deterministic_given_seed(name):
    channels, size = shapes_for(name)[0]
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(name, num_classes=5, in_channels=channels, image_size=size, **small_options(name))
        model.eval()
        outs.append((model.state_dict(), model(torch.ones(2, channels, size, size))))
    (sd1, y1), (sd2, y2) = outs
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert torch.equal(y1, y2)


def test_replace_head():
    model = build_model("resnet20", num_classes=10, in_channels=3, image_size=32)
    old = model.head
    assert replace_head(model, 4) is model
    assert isinstance(model.head, nn.Linear) and model.head is not old
    assert (model.head.in_features, model.head.out_features) == (64, 4) and model.num_classes == 4
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ReparamError):
        replace_head(nn.Sequential(nn.Linear(2, 2)), 3)


def test_normalize_buffers_are_not_parameters():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model = build_model("cnn", num_classes=10, in_channels=3, image_size=8, mean=mean, std=std)
    assert model.norm.mean.flatten().tolist() == pytest.approx(mean)
    assert {"norm.mean", "norm.std"} <= set(model.state_dict())
    assert not any(name.startswith("norm.") for name, _ in model.named_parameters())
    plain = build_model("cnn", num_classes=10, in_channels=3, image_size=8)
    assert n_params(plain) == n_params(model) and plain.norm.is_identity
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(plain.norm(x), x)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model.norm(x), expected)
    with pytest.raises(ReparamError, match="std"):
        Normalize((0.5,), (0.0,), 1)
    with pytest.raises(ReparamError, match="mean"):
        build_model("cnn", num_classes=10, in_channels=3, image_size=8, mean=(0.1, 0.2))


def test_unknown_model_and_options():
    with pytest.raises(ReparamError, match="unknown model 'resnet7'.*allowed:.*resnet20"):
        build_model("resnet7", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ReparamError, match="unknown option 'depth' for model 'mlp'.*hidden"):
        build_model("mlp", num_classes=10, in_channels=1, image_size=8, depth=3)
    with pytest.raises(ReparamError, match="'stem'"):
        build_model("resnet18-cifar", num_classes=10, in_channels=3, image_size=32, stem="imagenet")
    bad = [
        ("resnet18", {"stem": "tiny"}, "stem"),
        ("resnet20", {"width": 0}, "width"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"hidden": "64,x"}, "hidden"),
        ("fourier-mlp", {"output": "tanh"}, "output"),
        ("wrn-16-4", {"stem": 0}, "stem"),
    ]
    for name, options, word in bad:
        with pytest.raises(ReparamError, match=word):
            build_model(name, num_classes=10, in_channels=1, image_size=8, **options)
    with pytest.raises(ReparamError, match="num_classes"):
        build_model("mlp", num_classes=0, in_channels=1, image_size=8)


def test_string_options_from_the_command_line():
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden="32,16", dropout="0.1")
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]
    assert model.build_args["options"] == {"hidden": "32,16", "dropout": "0.1"}
    assert model_options("mlp") == {"hidden": (256, 128), "dropout": 0.0}


def test_wrn_names_depth_and_options():
    with pytest.raises(ReparamError, match="depth.*6n \\+ 4"):
        build_model("wrn-12-4", num_classes=10, in_channels=3, image_size=32)
    model = build_model("wrn-22-1", num_classes=10, in_channels=1, image_size=8, stem=8, dropout=0.3)
    assert model.conv_3x3.out_channels == 8 and len(model.stage_1) == 3 and model.feature_dim == 64
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    # BN only before each block (MixtureGrowth/GradMax): 2 * 8 * (16+32+64) fewer BN weights in WRN-10-2.
    full = count("wrn-10-2", 10)
    assert full - count("wrn-10-2", 10, inner_bn=False) == 2 * (32 + 64 + 128)


def test_wrn_fractional_width_and_mixturegrowth_options():
    from reparam.mixturegrowth import build_wrn

    opts = dict(stem=8, inner_bn=False, head_bias=False, init="torch")
    torch.manual_seed(0)
    zoo = build_model("wrn-10-0.5", num_classes=10, in_channels=1, image_size=8, **opts)
    torch.manual_seed(0)
    mg = build_wrn("wrn-10-1", num_classes=10, in_channels=1, half=True)     # the same network
    assert zoo.head.bias is None and [zoo.stage_1[0].conv1.out_channels, zoo.feature_dim] == [8, 32]
    assert all(torch.equal(a, b) for a, b in zip(zoo.state_dict().values(), mg.state_dict().values()))
    assert zoo.channel_spaces()["lastact.0"] == ("res3", "res3")
    for bad, word in (({"init": "xavier"}, "init"), ({"head_bias": "maybe"}, "head_bias")):
        with pytest.raises(ReparamError, match=word):
            build_model("wrn-10-1", num_classes=10, in_channels=1, image_size=8, **bad)
    with pytest.raises(ReparamError, match="empty layer"):
        build_model("wrn-10-0.01", num_classes=10, in_channels=1, image_size=8)


def test_resnet_width_and_stems():
    cifar = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=0.5)
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    assert cifar.feature_dim == 256
    imagenet = build_model("resnet50-imagenet", num_classes=10, in_channels=3, image_size=32, width=0.1)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.feature_dim == 4 * 51
    assert min(m.out_channels for m in imagenet.modules() if isinstance(m, nn.Conv2d)) >= 1


def test_vgg_skips_pools_on_small_inputs():
    model = build_model("vgg11", num_classes=10, in_channels=1, image_size=8, width=0.125)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    mlp_head = build_model("vgg16", num_classes=10, in_channels=3, image_size=32, width=0.125, hidden=32)
    assert mlp_head.feature_dim == 32 and mlp_head(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_fourier_mlp_matrix_from_seed():
    def build(seed, **kw):
        return build_model(
            "fourier-mlp",
            num_classes=0 + 1,
            in_channels=3,
            image_size=(4, 6),
            width=16,
            fourier=8,
            fourier_seed=seed,
            sigma=5.0,
            **kw,
        )

    torch.manual_seed(0)
    a = build(3)
    torch.manual_seed(99)  # the global RNG must not matter for B
    b = build(3)
    assert isinstance(a, FourierMLP) and a.B.shape == (2, 8)
    assert torch.equal(a.B, b.B) and torch.equal(a.B, FourierMLP.fourier_matrix(2, 8, 5.0, 3))
    assert not torch.equal(a.B, build(4).B)
    assert "B" not in dict(a.named_parameters()) and "B" not in a.state_dict()
    assert n_params(a) == (16 * 16 + 16 + 2 * 16) + 3 * (16 * 16 + 16 + 2 * 16) + (16 * 3 + 3)
    grid = a.coords(4, 6)
    assert grid.shape == (24, 2) and grid.min() == -1 and grid.max() == 1
    assert torch.equal(grid[1], torch.tensor([-1.0, -0.6]))  # row-major, column 1 is x
    assert a(grid).shape == (24, 3) and a.render(4, 6).shape == (3, 4, 6)
    gray = build(0, out_channels=1, output="sigmoid", layernorm=False, depth=1)
    y = gray(grid)
    assert y.shape == (24, 1) and ((y > 0) & (y < 1)).all()
    assert not any(isinstance(m, nn.LayerNorm) for m in gray.modules())


def test_register_model_and_layers_are_plain_modules():
    @register_model("test-tiny")
    def tiny(*, num_classes, in_channels, image_size, mean=None, std=None, hidden=4):
        return build_model(
            "mlp", num_classes=num_classes, in_channels=in_channels, image_size=image_size, hidden=(hidden,)
        )

    try:
        model = build_model("test-tiny", num_classes=3, in_channels=1, image_size=4, hidden=5)
        assert model.head.in_features == 5
        with pytest.raises(ValueError):
            register_model("test-tiny", tiny)
    finally:
        del MODELS["test-tiny"]
    # Methods reparameterize `.weight` of Conv2d/Linear with torch.nn.utils.parametrize: it must just work.
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=8)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 19 + 1

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    x = torch.rand(2, 1, 8, 8)
    model.eval()
    before = model(x)
    for layer in layers:
        torch.nn.utils.parametrize.register_parametrization(layer, "weight", Double())
    assert not torch.allclose(model(x), before)
