"""The ``classical`` prior extractor: nanoparticles by scikit-image, no learning.

For one micrograph:

1. polarity: dark objects (bright-field) are inverted so objects are bright;
2. scale: the pixel size from the file, else estimated
   (:func:`emcopilot.specimen.morphology.estimate_pixel_size_nm`); the recipe's
   diameter range in nm becomes a range in pixels; the image is block-reduced
   so that a typical object spans about ``working_diameter_px`` pixels
   (faster, and the same filter sizes for every magnification);
3. denoising: Gaussian, sigma = ``smoothing_fraction`` x the typical diameter;
4. background: white top-hat (grey opening with a square of
   ``background_size_factor`` x the typical diameter), which removes the
   support's slower contrast;
5. threshold: Otsu on the top-hat, but never below ``min_snr`` times the
   background noise (median absolute deviation of the top-hat); objects then
   grow down to ``grow_fraction`` of that threshold (hysteresis), so their
   outlines are not cut at the Otsu level;
6. splitting: markers at the local maxima of the distance transform at least
   ``split_fraction`` x the typical diameter apart, then a watershed;
7. filtering (:mod:`.filtering`): equivalent diameter within the recipe's
   range, contrast against a ring of local background (``min_contrast_snr``),
   solidity; masks covering
   most of the image (the support) are dropped and reported.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from emcopilot.core.interfaces import Instances, Micrograph
from emcopilot.specimen.morphology import normalise_image

from .filtering import filter_regions, polarity_warning
from .scale import image_scale, is_bright, robust_noise

log = logging.getLogger("emcopilot.priors.classical")


def reduce_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean by an integer factor (edges padded by reflection)."""
    if factor <= 1:
        return image
    from skimage.transform import downscale_local_mean
    return downscale_local_mean(image, (factor, factor)).astype(np.float32)


def expand_labels_to(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a label image reduced by ``factor`` back to ``shape``."""
    if factor <= 1:
        return labels
    expanded = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(expanded[:shape[0], :shape[1]])


def watershed_split(foreground: np.ndarray, min_distance_px: float) -> np.ndarray:
    """Split touching objects: distance-transform maxima as markers, then a watershed."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndimage.distance_transform_edt(foreground)
    components, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=max(1, int(round(min_distance_px))), labels=components,
                           exclude_border=False)
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # components without a marker (plateaus) keep one marker each
    missing = np.setdiff1d(np.unique(components[foreground]), np.unique(components[markers > 0]))
    for index, component in enumerate(missing, start=len(peaks) + 1):
        row, col = np.argwhere(components == component)[0]
        markers[row, col] = index
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


class ClassicalExtractor:
    """Top-hat, threshold and watershed; parameters in nm from the recipe's sample."""

    def __init__(self, params: dict[str, Any], sample: Any = None):
        self.params = dict(params)
        self.sample = sample
        self.bright = is_bright(params.get("contrast"), sample)

    def extract(self, micrograph: Micrograph) -> Instances:
        from scipy import ndimage
        from skimage.filters import apply_hysteresis_threshold, threshold_otsu

        micrograph.require_finite()
        params = self.params
        scale = image_scale(micrograph, params, self.sample, self.bright)
        image = normalise_image(micrograph.data)
        if not self.bright:
            image = 1.0 - image
        factor = max(1, int(scale.typical_diameter_px / params["working_diameter_px"]))
        work = reduce_image(image, factor)
        min_px, max_px = scale.min_diameter_px / factor, scale.max_diameter_px / factor
        typical_px = math.sqrt(min_px * max_px)
        smooth = ndimage.gaussian_filter(work, max(0.5, params["smoothing_fraction"] * typical_px))
        side = int(math.ceil(params["background_size_factor"] * typical_px)) | 1
        tophat = smooth - ndimage.grey_opening(smooth, size=(side, side))
        noise = max(robust_noise(tophat), 1e-6)
        threshold = params["min_snr"] * noise
        if params["threshold"] == "otsu":
            threshold = max(float(threshold_otsu(tophat)), threshold)
        foreground = apply_hysteresis_threshold(tophat, params["grow_fraction"] * threshold, threshold)
        labels = watershed_split(foreground, params["split_fraction"] * typical_px)
        labels, report = filter_regions(labels, tophat, noise=noise, min_diameter_px=min_px,
                                        max_diameter_px=max_px, min_snr=params["min_contrast_snr"],
                                        min_solidity=params["min_solidity"],
                                        max_area_fraction=params["max_area_fraction"], name=micrograph.name)
        warning = polarity_warning(work, typical_px, self.bright, micrograph.name)
        labels = expand_labels_to(labels, factor, micrograph.shape)
        metadata = {**scale.metadata(), "extractor": "classical", "reduction_factor": factor,
                    "threshold_over_noise": threshold / noise, **report}
        if warning:
            metadata["polarity_warning"] = warning
        if report["kept"] == 0:
            log.warning("%s: no object found (threshold %.3g, %.1f x noise)", micrograph.name, threshold,
                        threshold / noise)
        return Instances(labels=labels, metadata=metadata)
