"""An EfficientNet-B0-like CNN (Tan & Le 2019) in plain torch.

MBConv blocks: 1x1 expansion, 3x3 or 5x5 depthwise, squeeze-and-excitation (global pool, two tiny
1x1 convs, SiLU and sigmoid gate), 1x1 projection; SiLU everywhere; B0's stage plan.
"""

from __future__ import annotations

import math

from torch import nn

from edgecls.models.mobilevit import conv_bn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.SiLU(),
                                  nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel: int):
        super().__init__()
        hidden = cin * expand
        self.res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                   SqueezeExcite(hidden, max(1, cin // 4)), conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class EfficientNetB0(nn.Module):
    # (expand ratio, channels, repeats, first stride, depthwise kernel)
    PLAN = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
            (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]

    def __init__(self, num_classes: int = 1000, depth: float = 1.0, in_channels: int = 3):
        """depth < 1 repeats each stage fewer times (at least once), for quick tests."""
        super().__init__()
        feats: list[nn.Module] = [conv_bn(in_channels, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride, kernel in self.PLAN:
            for i in range(max(1, math.ceil(repeats * depth))):
                feats.append(MBConv(cin, cout, stride if i == 0 else 1, expand, kernel))
                cin = cout
        feats.append(conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
