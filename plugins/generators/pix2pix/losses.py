"""Losses: adversarial (LSGAN or BCE), L1, and a differentiable SSIM loss."""
from __future__ import annotations

import torch
from torch import nn

GAN_LOSSES = ("lsgan", "bce")


def adversarial_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """Discriminator output vs the target label (1 = real, 0 = generated).

    ``lsgan``: least squares (Mao et al., ICCV 2017); ``bce``: the original
    cross-entropy GAN objective (Goodfellow et al., NeurIPS 2014), on logits.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    logits = logits.float()
    if kind == "lsgan":
        return nn.functional.mse_loss(logits, target)
    if kind == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")


def _gaussian_window(sigma_px: float = 1.5, radius_px: int = 5) -> torch.Tensor:
    offsets = torch.arange(-radius_px, radius_px + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma_px ** 2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - mean SSIM with an 11x11 Gaussian window, sigma 1.5 (Wang et al., IEEE TIP 13, 600, 2004).

    This is the training loss only (it must be differentiable); reported SSIM
    values come from scikit-image. ``data_range`` 2 matches images in [-1, 1].
    """
    window = _gaussian_window().to(prediction.device, torch.float32)
    prediction, target = prediction.float(), target.float()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, window)

    mu_p, mu_t = blur(prediction), blur(target)
    var_p = blur(prediction * prediction) - mu_p ** 2
    var_t = blur(target * target) - mu_t ** 2
    covariance = blur(prediction * target) - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * covariance + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return 1.0 - ssim_map.mean()
