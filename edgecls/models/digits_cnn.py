"""The demo classifier: a small CNN for 32x32 digits with one depthwise-separable block."""

from __future__ import annotations

from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_cbr(in_channels, w),                 # 32x32
            *_cbr(w, 2 * w, stride=2),             # 16x16
            *_cbr(2 * w, 2 * w, groups=2 * w),     # depthwise
            *_cbr(2 * w, 4 * w, k=1),              # pointwise
            *_cbr(4 * w, 4 * w, stride=2),         # 8x8
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
