"""A ConvNeXt-like CNN (Liu et al. 2022) in plain torch, ConvNeXt-Pico sizes by default.

Patchify stem (4x4 conv, stride 4) and LayerNorm; blocks of a 7x7 depthwise conv, LayerNorm over
channels (channels-last, as the reference code does it), an inverted MLP (Linear 4x, GELU,
Linear) scaled per channel, and a residual; LayerNorm + 2x2 stride-2 conv between stages.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelsLastNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (permute, normalise, permute back)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))  # layer scale (1e-6 at init; trained nets ~0.1-1)

    def forward(self, x):
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 1000, depths: tuple[int, ...] = (2, 2, 6, 2),
                 dims: tuple[int, ...] = (64, 128, 256, 512), in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], 4, 4), ChannelsLastNorm(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:
                layers += [ChannelsLastNorm(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean((2, 3))))
