"""Held-out published architectures (issue #16): nets no rule was written or tuned against.

edgecls.models holds the reference nets the schedules are developed on; these stay out of the
package and out of the tests, so that `benchmarks/heldout.py` measures how the zero-trial rules
carry over to architectures nobody looked at while writing them. Plain torch (no torchvision or
timm: they drag in a CUDA torch), layer plans as published, random weights (latency does not
depend on them):

- resnet50: bottleneck ResNet (He et al. 2016), [3, 4, 6, 3];
- densenet121: densely connected, growth 32, [6, 12, 24, 16] (Huang et al. 2017): concat-heavy;
- mobilenet_v3_large: hard-swish, squeeze-excite with hard-sigmoid (Howard et al. 2019);
- shufflenet_v2: channel split and shuffle, 1.0x (Ma et al. 2018);
- regnety_400mf: group convs + squeeze-excite, widths [48, 104, 208, 440], depths [1, 3, 6, 6],
  group width 8 (Radosavovic et al. 2020);
- repvgg_a0: the inference form, plain 3x3 conv + ReLU, [2, 4, 14, 1] (Ding et al. 2021);
- squeezenet1_1: fire modules (Iandola et al. 2016);
- poolformer_s12: MetaFormer with average-pool token mixing, GroupNorm, GELU MLPs
  (Yu et al. 2022), [2, 2, 6, 2] x [64, 128, 320, 512].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class Head(nn.Sequential):
    def __init__(self, cin, classes=1000):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


# ---- ResNet-50 -------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, mid * 4, 1, act=None))
        self.short = conv_bn(cin, mid * 4, 1, stride, act=None) if stride != 1 or cin != mid * 4 else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def resnet50():
    layers, cin = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for i, (n, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for j in range(n):
            layers.append(Bottleneck(cin, mid, 2 if j == 0 and i > 0 else 1))
            cin = mid * 4
    return nn.Sequential(*layers, Head(cin))


# ---- DenseNet-121 ----------------------------------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin, growth=32):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet121(growth=32):
    layers, c = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for i, n in enumerate((6, 12, 24, 16)):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if i < 3:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            c //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(), Head(c))


# ---- MobileNetV3-Large -----------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, gate=nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), act(), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


def _div8(v):
    return max(8, int(v + 4) // 8 * 8)


class InvertedResidual(nn.Module):
    def __init__(self, cin, k, exp, cout, se, act, stride):
        super().__init__()
        layers = [conv_bn(cin, exp, 1, act=act)] if exp != cin else []
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, _div8(exp // 4)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v3_large():
    RE, HS = nn.ReLU, nn.Hardswish
    plan = [(3, 16, 16, False, RE, 1), (3, 64, 24, False, RE, 2), (3, 72, 24, False, RE, 1),
            (5, 72, 40, True, RE, 2), (5, 120, 40, True, RE, 1), (5, 120, 40, True, RE, 1),
            (3, 240, 80, False, HS, 2), (3, 200, 80, False, HS, 1), (3, 184, 80, False, HS, 1),
            (3, 184, 80, False, HS, 1), (3, 480, 112, True, HS, 1), (3, 672, 112, True, HS, 1),
            (5, 672, 160, True, HS, 2), (5, 960, 160, True, HS, 1), (5, 960, 160, True, HS, 1)]
    layers, cin = [conv_bn(3, 16, 3, 2, act=HS)], 16
    for k, exp, cout, se, act, s in plan:
        layers.append(InvertedResidual(cin, k, exp, cout, se, act, s))
        cin = cout
    return nn.Sequential(*layers, conv_bn(cin, 960, 1, act=HS), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, 1000))


# ---- ShuffleNetV2 1.0x -----------------------------------------------------------------------

def channel_shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        half = cout // 2
        self.stride = stride
        branch_in = cin if stride == 2 else half
        self.branch2 = nn.Sequential(conv_bn(branch_in, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))
        if stride == 2:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, half, 1))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, 1)
            out = torch.cat([a, self.branch2(b)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out)


def shufflenet_v2():
    layers, cin = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for n, cout in zip((4, 8, 4), (116, 232, 464)):
        for j in range(n):
            layers.append(ShuffleUnit(cin, cout, 2 if j == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, conv_bn(cin, 1024, 1), Head(1024))


# ---- RegNetY-400MF ---------------------------------------------------------------------------

class RegNetYBlock(nn.Module):
    def __init__(self, cin, cout, stride, group_width=8):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 1), conv_bn(cout, cout, 3, stride, groups=cout // group_width),
                                  SqueezeExcite(cout, max(1, cin // 4), gate=nn.Sigmoid), conv_bn(cout, cout, 1, act=None))
        self.short = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def regnety_400mf():
    layers, cin = [conv_bn(3, 32, 3, 2)], 32
    for n, cout in zip((1, 3, 6, 6), (48, 104, 208, 440)):
        for j in range(n):
            layers.append(RegNetYBlock(cin, cout, 2 if j == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, Head(cin))


# ---- RepVGG-A0 (inference form) --------------------------------------------------------------

def repvgg_a0():
    layers, cin = [nn.Conv2d(3, 48, 3, 2, 1), nn.ReLU()], 48
    for n, cout in zip((2, 4, 14, 1), (48, 96, 192, 1280)):
        for j in range(n):
            layers += [nn.Conv2d(cin, cout, 3, 2 if j == 0 else 1, 1), nn.ReLU()]
            cin = cout
    return nn.Sequential(*layers, Head(cin))


# ---- SqueezeNet 1.1 --------------------------------------------------------------------------

class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


def squeezenet1_1():
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64), Fire(128, 16, 64), pool(),
                         Fire(128, 32, 128), Fire(256, 32, 128), pool(), Fire(256, 48, 192), Fire(384, 48, 192),
                         Fire(384, 64, 256), Fire(512, 64, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


# ---- PoolFormer-S12 --------------------------------------------------------------------------

class PoolFormerBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.pool = nn.GroupNorm(1, c), nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.norm2 = nn.GroupNorm(1, c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.pool(y) - y
        return x + self.mlp(self.norm2(x))


def poolformer_s12():
    layers, cin = [nn.Conv2d(3, 64, 7, 4, 2)], 64
    for i, (n, c) in enumerate(zip((2, 2, 6, 2), (64, 128, 320, 512))):
        if i:
            layers.append(nn.Conv2d(cin, c, 3, 2, 1))
        layers += [PoolFormerBlock(c) for _ in range(n)]
        cin = c
    return nn.Sequential(*layers, nn.GroupNorm(1, cin), Head(cin))


HELDOUT_NETS = {
    "resnet50": resnet50, "densenet121": densenet121, "mobilenet_v3_large": mobilenet_v3_large,
    "shufflenet_v2": shufflenet_v2, "regnety_400mf": regnety_400mf, "repvgg_a0": repvgg_a0,
    "squeezenet1_1": squeezenet1_1, "poolformer_s12": poolformer_s12,
}
