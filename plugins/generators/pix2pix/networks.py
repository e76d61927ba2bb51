"""Networks of the pix2pix generator: a U-Net and two conditional discriminators.

Isola et al., "Image-to-image translation with conditional adversarial
networks", CVPR 2017 (pix2pix): U-Net generator with skip connections, and a
discriminator that judges (condition, image) pairs either per 70x70 patch
(PatchGAN) or per pixel (1x1, the "pixelGAN" of their section 4.4).
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _double_conv(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="reflect", bias=norm == "none"),
        _norm(norm, out_channels), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode="reflect", bias=norm == "none"),
        _norm(norm, out_channels), nn.LeakyReLU(0.2, inplace=True),
    )


class UNetGenerator(nn.Module):
    """U-Net: ``depth`` times (double 3x3 conv, 2x2 average pool) down, then back up.

    Channels are ``width * 2**level``, capped at ``8 * width``. Upsampling is
    bilinear followed by convolution (no transposed convolution, which leaves
    checkerboard patterns in the power spectrum). The output is linear (one
    channel, normalised intensity). Input sides must be multiples of
    ``2**depth`` (:meth:`pad_multiple`).
    """

    def __init__(self, in_channels: int, width: int = 32, depth: int = 4, norm: str = "batch"):
        super().__init__()
        channels = [min(width * 2 ** level, 8 * width) for level in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList()
        previous = in_channels
        for level in range(depth):
            self.down.append(_double_conv(previous, channels[level], norm))
            previous = channels[level]
        self.bottom = _double_conv(previous, channels[depth], norm)
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(_double_conv(channels[level + 1] + channels[level], channels[level], norm))
        self.head = nn.Conv2d(channels[0], 1, 1)

    @property
    def pad_multiple(self) -> int:
        return 2 ** self.depth

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        skips = []
        x = condition
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.avg_pool2d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: C64-C128-C256-C512 (4x4 convs, strides 2-2-2-1) and a 1-channel 4x4 conv.

    ``width`` replaces the 64 of the paper; the receptive field of each output
    logit is 70x70 pixels whatever the width.
    """

    def __init__(self, in_channels: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for multiple, stride in ((2, 2), (4, 2), (8, 1)):
            layers += [nn.Conv2d(channels, width * multiple, 4, stride=stride, padding=1, bias=norm == "none"),
                       _norm(norm, width * multiple), nn.LeakyReLU(0.2, inplace=True)]
            channels = width * multiple
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.model(pair)


class PixelDiscriminator(nn.Module):
    """1x1 "pixelGAN": judges every pixel's (condition, intensity) alone: C64-C128 1x1 convs."""

    def __init__(self, in_channels: int, width: int = 64, norm: str = "batch"):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, width, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 1, bias=norm == "none"), _norm(norm, 2 * width),
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(2 * width, 1, 1))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.model(pair)


def build_discriminator(kind: str, in_channels: int, width: int, norm: str) -> nn.Module:
    if kind == "patch":
        return PatchDiscriminator(in_channels, width, norm)
    if kind == "pixel":
        return PixelDiscriminator(in_channels, width, norm)
    raise ValueError(f"discriminator must be 'patch' or 'pixel', got {kind!r}")


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) convolutions and N(1, 0.02) norm scales, as in pix2pix."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)
