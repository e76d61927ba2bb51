"""What a micrograph goes through before the network sees it: background subtraction and normalisation."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def smooth_background(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The image smoothed by a Gaussian of ``sigma_px`` (edges reflected), computed on a copy
    block-averaged by ``sigma_px // 4`` and interpolated back: a background that wide has nothing
    finer than the blocks, so it differs from the full-resolution filter by about a hundredth of the
    noise, at an eighth of the cost (0.04 s, not 0.32, for sigma 50 px on 1024²)."""
    from scipy import ndimage
    from skimage.transform import downscale_local_mean

    block = max(1, int(sigma_px // 4))
    if block == 1:
        return ndimage.gaussian_filter(image, sigma_px, mode="reflect")
    height, width = image.shape
    margin = int(math.ceil(3 * sigma_px / block)) * block  # reflected at full resolution, as the filter does
    padded = np.pad(image, ((margin, margin - height % block + block), (margin, margin - width % block + block)),
                    mode="symmetric")
    small = downscale_local_mean(padded, (block, block))
    # the block mean already smoothed by a box of variance (block² - 1) / 12 px²
    small = ndimage.gaussian_filter(small, math.sqrt(sigma_px ** 2 - (block ** 2 - 1) / 12) / block, mode="nearest")
    full = ndimage.zoom(small, block, order=1, grid_mode=True, mode="nearest")
    return full[margin:margin + height, margin:margin + width].astype(np.float32)


def normalise(image: np.ndarray, percentiles: Sequence[float], invert: bool,
              background_px: float | None = None) -> np.ndarray:
    """Robust intensity normalisation: the low/high percentiles map to 0/1 (not clipped).

    With ``background_px`` a Gaussian-smoothed background of that width is
    subtracted first, so only structure finer than it is left (vacuum edges,
    thickness steps and uneven illumination go).
    """
    if background_px:
        image = np.asarray(image, np.float32)
        image = image - smooth_background(image, float(background_px))
    low, high = np.percentile(image, percentiles)
    scale = high - low if high > low else (float(np.std(image)) or 1.0)
    out = (np.asarray(image, np.float32) - low) / scale
    return (1.0 - out if invert else out).astype(np.float32)
