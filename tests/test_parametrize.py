import torch
import torch.nn as nn

from reparam.core.parametrize import exclude, fold, parametrized_layers, register, select_layers


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s)))

    def forward(self, w):
        return w * self.s


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


def test_default_filter_picks_conv_and_linear_only():
    assert [n for n, _ in select_layers(_net())] == ["0", "3"]


def test_exclude_filter():
    assert [n for n, _ in select_layers(_net(), exclude("3"))] == ["0"]


def test_register_and_fold_keep_outputs():
    net = _net().eval()
    x = torch.randn(2, 1, 4, 4)
    names = register(net, lambda n, m: Scale(2.0))
    assert names == ["0", "3"] and len(list(parametrized_layers(net))) == 2
    y = net(x)
    fold(net)
    assert not list(parametrized_layers(net))
    assert torch.equal(net(x), y)
    assert isinstance(net[0].weight, nn.Parameter)
