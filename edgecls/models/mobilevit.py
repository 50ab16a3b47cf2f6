"""A MobileViT-XS-like hybrid (Mehta & Rastegari 2022) in plain torch.

MobileNetV2 blocks with SiLU for the early stages; later stages add MobileViT blocks: a local 3x3
conv and a 1x1 projection, the map unfolded into 2x2 patches (pixels at the same place of every
patch form one token sequence), transformer blocks over each sequence, folded back, projected and
fused with the block's input by a 3x3 conv. Unfold and fold are reshapes and permutes, as in the
reference code, so the ONNX graph has the transposes a published MobileViT has.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecls.models.vit import Block


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class MV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.res = stride == 1 and cin == cout
        self.conv = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


class MobileViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, depth: int, heads: int = 4, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(conv_bn(channels, channels, 3), nn.Conv2d(channels, dim, 1, bias=False))
        self.transformer = nn.Sequential(*[Block(dim, heads, 2.0, act=nn.SiLU) for _ in range(depth)],
                                         nn.LayerNorm(dim))
        self.project = conv_bn(dim, channels, 1)
        self.fuse = conv_bn(2 * channels, channels, 3)

    def forward(self, x):
        y = self.local(x)
        b, d, h, w = y.shape
        p = self.patch
        # (b, d, h, w) -> (b * p * p, h/p * w/p, d): one sequence per position inside a patch
        t = y.reshape(b, d, h // p, p, w // p, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, -1, d)
        t = self.transformer(t)
        y = t.reshape(b, p, p, h // p, w // p, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.fuse(torch.cat([x, self.project(y)], dim=1))


class MobileViTXS(nn.Module):
    """MobileViT-XS sizes at the defaults (transformer depths 2, 4, 3 at 96, 120, 144 wide);
    `depths` shortens it for quick tests. image_size must be a multiple of 64 (32x down, 2x2 patches)."""

    def __init__(self, num_classes: int = 1000, depths: tuple[int, int, int] = (2, 4, 3), in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(in_channels, 16, 3, 2), MV2(16, 32, 1),
            MV2(32, 48, 2), MV2(48, 48, 1), MV2(48, 48, 1),
            MV2(48, 64, 2), MobileViTBlock(64, 96, depths[0]),
            MV2(64, 80, 2), MobileViTBlock(80, 120, depths[1]),
            MV2(80, 96, 2), MobileViTBlock(96, 144, depths[2]),
            conv_bn(96, 384, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(384, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))
