"""The morphology prior: what the objects of a lab's micrographs look like, in nm.

:class:`MorphologyPrior` is fitted to the instances a prior extractor found
(:meth:`MorphologyPrior.fit`) and summarises them as distributions: a lognormal
size in nm, aspect ratio and circularity, number density per nm², contrast
against the local background, and a bank of example outlines. It is saved as
JSON (``prior.json``) and turned into a :class:`emcopilot.layout.LayoutSpec`
(:meth:`MorphologyPrior.layout_spec`) from which new label maps are drawn
(:meth:`MorphologyPrior.sample`).

:func:`estimate_pixel_size_nm` gives uncalibrated images (JPEGs without
metadata) a working scale: the dominant blob size in pixels, from a
Laplacian-of-Gaussian scale space, against the recipe's expected size in nm.

Numpy/scipy/scikit-image only; importing this module never imports torch.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError
from .interfaces import Instances, Micrograph

if TYPE_CHECKING:
    from .layout import Layout, LayoutSpec
    from .recipe import Sample

log = logging.getLogger(__name__)

#: The scale space runs on a copy at most this many pixels on a side.
SCALE_SPACE_MAX_SIDE_PX = 1024
#: Scale-normalised LoG maxima kept when estimating the dominant blob size.
STRONGEST_BLOBS = 30
#: The LoG of a disk of radius r peaks at sigma = r / sqrt(2) (Lindeberg 1998,
#: Int. J. Comput. Vision 30:79), i.e. diameter 2·sqrt(2)·sigma. On
#: annotated STEM particles this over-estimates the boxed size by ~1.25
#: (median over the development images), hence this correction.
LOG_DIAMETER_CORRECTION = 0.8
#: Outlines kept in a prior's bank, and radial samples per outline.
OUTLINE_BANK_SIZE = 64
OUTLINE_POINTS = 64

PRIOR_FORMAT = "emcopilot.morphology_prior/1"


# --------------------------------------------------------------------------- scale

def normalise_image(data: np.ndarray) -> np.ndarray:
    """Robustly scale to about [0, 1] (0.5 and 99.5 percentiles), float32, NaN-free."""
    data = np.asarray(data, np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, np.median(data[finite]) if finite.any() else 0.0)
    low, high = np.percentile(data, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(data)
    return ((data - low) / (high - low)).astype(np.float32)


def expected_diameter_nm(sample: "Sample | None", diameter_nm: Sequence[float] | None = None) -> float:
    """Typical object diameter: geometric mean of ``diameter_nm`` (else the sample's range)."""
    if diameter_nm is None:
        if sample is None:
            raise InputError("the expected object size is unknown: give a recipe sample with diameter_nm")
        diameter_nm = sample.diameter_nm
    low, high = (float(v) for v in diameter_nm)
    return math.sqrt(low * high)


def dominant_diameter_px(image: np.ndarray, bright: bool = True) -> float:
    """Typical diameter (px) of the strongest compact blobs of one polarity.

    Builds a scale-normalised Laplacian-of-Gaussian scale space (sigma from
    1.2 px to 1/24 of the short side), keeps its 3-D local maxima (space and
    scale; maxima at the two end scales are dropped), and returns the median
    diameter of the :data:`STRONGEST_BLOBS` strongest, as
    ``2·sqrt(2)·sigma·LOG_DIAMETER_CORRECTION``. Large images are block-averaged
    to at most :data:`SCALE_SPACE_MAX_SIDE_PX` first.
    """
    from scipy import ndimage
    from skimage.transform import downscale_local_mean

    image = normalise_image(image)
    factor = 1
    while max(image.shape) / factor > SCALE_SPACE_MAX_SIDE_PX:
        factor *= 2
    small = downscale_local_mean(image, (factor, factor)) if factor > 1 else image
    largest = min(small.shape) / 24
    if largest < 2.0:
        raise InputError(f"image of shape {image.shape} is too small to estimate a blob scale")
    sigmas = np.geomspace(1.2, largest, 16)
    sign = -1.0 if bright else 1.0
    stack = np.stack([sign * ndimage.gaussian_laplace(small, s) * s * s for s in sigmas])
    peaks = (stack == ndimage.maximum_filter(stack, size=(3, 5, 5))) & (stack > 0)
    peaks[0] = peaks[-1] = False
    scale_index = np.nonzero(peaks)[0]
    if len(scale_index) == 0:
        raise InputError("no blob of the expected polarity was found to estimate the scale")
    strongest = np.argsort(stack[peaks])[::-1][:STRONGEST_BLOBS]
    diameters = 2 * math.sqrt(2) * sigmas[scale_index[strongest]] * factor
    return float(np.exp(np.median(np.log(diameters))) * LOG_DIAMETER_CORRECTION)


def estimate_pixel_size_nm(micrograph: Micrograph, sample: "Sample | None", bright: bool | None = None,
                           diameter_nm: Sequence[float] | None = None) -> float:
    """Pixel size (nm/px) of an uncalibrated micrograph from its dominant blob size.

    ``pixel size = expected diameter (nm) / dominant blob diameter (px)``,
    with the expected diameter the geometric mean of the recipe's
    ``diameter_nm`` range and the blob polarity from ``sample.particle_contrast``
    (``bright`` and ``diameter_nm`` override the sample). Accurate to within about 1.5x on most
    development images; pass ``--pixel-size-nm`` when the calibration is known.
    """
    if bright is None:
        bright = sample is None or sample.particle_contrast != "dark"
    diameter_px = dominant_diameter_px(micrograph.data, bright=bright)
    estimate = expected_diameter_nm(sample, diameter_nm) / diameter_px
    log.warning("%s has no calibration: dominant blob diameter %.1f px -> estimated pixel size %.4g nm/px "
                "(give --pixel-size-nm to override)", micrograph.name, diameter_px, estimate)
    return float(estimate)
