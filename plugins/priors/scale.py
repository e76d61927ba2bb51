"""What every prior extractor needs first: polarity, pixel size and sizes in pixels.

Parameters come from the recipe's ``sample:`` block (sizes in nm, the particle
contrast of the modality) so that one recipe serves images at any
magnification; an uncalibrated image gets its pixel size from
:func:`emcopilot.specimen.morphology.estimate_pixel_size`, recorded in
``Instances.metadata["pixel_size_nm_estimate"]`` (the value) and
``["pixel_size_estimate"]`` (with its uncertainty and whether it is credible).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from emcopilot.core.errors import InputError
from emcopilot.core.interfaces import Micrograph

@dataclass(frozen=True)
class ImageScale:
    """Pixel size of one micrograph and the expected object sizes on its grid."""

    pixel_size_nm: float
    estimated: bool
    min_diameter_px: float
    max_diameter_px: float
    estimate: dict[str, Any] | None = None  # PixelSizeEstimate.as_dict() of an estimated one

    @property
    def typical_diameter_px(self) -> float:
        return math.sqrt(self.min_diameter_px * self.max_diameter_px)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pixel_size_nm": self.pixel_size_nm,
                               "diameter_px_range": [self.min_diameter_px, self.max_diameter_px]}
        if self.estimated:
            out["pixel_size_nm_estimate"] = self.pixel_size_nm
            if self.estimate is not None:
                out["pixel_size_estimate"] = self.estimate
        return out


def is_bright(contrast: str | None, sample: Any) -> bool:
    """Objects brighter than the support? ``contrast`` ('bright'/'dark') wins over the sample."""
    if contrast is not None:
        return contrast == "bright"
    return sample is None or getattr(sample, "particle_contrast", "bright") != "dark"


def diameter_range_nm(params: dict, sample: Any) -> tuple[float, float]:
    """``[min_diameter_nm, max_diameter_nm]`` from the params, else the sample's ``diameter_nm``."""
    low, high = params.get("min_diameter_nm"), params.get("max_diameter_nm")
    if sample is not None:
        low = low if low is not None else float(sample.diameter_nm[0])
        high = high if high is not None else float(sample.diameter_nm[1])
    if low is None or high is None:
        raise InputError("without a recipe sample, give min_diameter_nm and max_diameter_nm")
    if not 0 < low <= high:
        raise InputError(f"min_diameter_nm ({low}) must be positive and not above max_diameter_nm ({high})")
    return float(low), float(high)


def image_scale(micrograph: Micrograph, params: dict, sample: Any, bright: bool) -> ImageScale:
    """The pixel size (from the file, else estimated) and the size range in pixels."""
    from emcopilot.specimen.morphology import estimate_pixel_size

    low_nm, high_nm = diameter_range_nm(params, sample)
    pixel_size_nm, estimate = micrograph.pixel_size_nm, None
    if pixel_size_nm is None:
        estimate = estimate_pixel_size(micrograph, sample, bright=bright, diameter_nm=(low_nm, high_nm))
        pixel_size_nm = estimate.pixel_size_nm
    return ImageScale(float(pixel_size_nm), estimate is not None, low_nm / pixel_size_nm, high_nm / pixel_size_nm,
                      estimate.as_dict() if estimate is not None else None)


def robust_noise(values: np.ndarray) -> float:
    """Standard deviation of the background from the median absolute deviation (Gaussian: x1.4826)."""
    values = np.asarray(values, float)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))
