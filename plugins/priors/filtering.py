"""False-positive filters shared by the prior extractors.

Every candidate object is checked against the recipe in physical terms:
equivalent diameter within the expected range, contrast against its *local*
background (a ring around it) above ``min_snr`` times the noise, solidity
(convex objects), and area fraction (a mask covering most of the frame is
the support, not a particle). SAM's overlapping masks are first resolved into
one label image (:func:`masks_to_labels`): duplicates and masks that contain
several others are dropped.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger("emcopilot.priors")

#: Band-pass skewness below which the polarity is reported as contradicting the recipe.
POLARITY_SKEW_LIMIT = -0.25
#: Width of the background ring around an object, as a fraction of the typical diameter (min 2 px).
RING_FRACTION = 0.5


def relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the label ids in ``keep`` and number them 1..N in order."""
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    keep = np.asarray(keep, int)
    lookup[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lookup[labels]


def local_contrast(labels: np.ndarray, image: np.ndarray, ring_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Label ids and (mean inside - mean of a ring ``ring_px`` wide around each object)."""
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return ids, np.zeros(0)
    grown = expand_labels(labels, distance=max(2.0, ring_px))
    ring = np.where(labels == 0, grown, 0)
    inside = np.asarray(ndimage.mean(image, labels, ids), float)
    with np.errstate(invalid="ignore", divide="ignore"):  # an object without background around it
        around = np.asarray(ndimage.mean(image, ring, ids), float)
    around = np.where(np.isfinite(around), around, np.median(image[labels == 0]) if (labels == 0).any() else 0.0)
    return ids, inside - around


def filter_regions(labels: np.ndarray, image: np.ndarray, *, noise: float, min_diameter_px: float,
                   max_diameter_px: float, min_snr: float, min_solidity: float, max_area_fraction: float,
                   name: str = "") -> tuple[np.ndarray, dict]:
    """Drop objects that fail the size, contrast, solidity or area-fraction tests.

    ``image`` has the objects bright (inverted for dark objects). Returns the
    relabelled image and a report with the number kept and dropped per reason.
    """
    from skimage.measure import regionprops_table

    report = {"candidates": 0, "kept": 0, "dropped_size": 0, "dropped_contrast": 0,
              "dropped_shape": 0, "dropped_support": 0}
    if not (labels > 0).any():
        return labels.astype(np.int32), report
    props = regionprops_table(labels, properties=("label", "area", "solidity"))
    ids, area, solidity = props["label"], props["area"].astype(float), props["solidity"]
    report["candidates"] = int(len(ids))
    support = area > max_area_fraction * labels.size
    diameter = np.sqrt(4 * area / np.pi)
    size_ok = (diameter >= min_diameter_px) & (diameter <= max_diameter_px)
    contrast_ids, contrast = local_contrast(labels, image, RING_FRACTION * np.sqrt(min_diameter_px * max_diameter_px))
    snr = np.zeros(len(ids))
    snr[np.searchsorted(ids, contrast_ids)] = contrast / max(noise, 1e-12)
    contrast_ok = snr >= min_snr
    shape_ok = solidity >= min_solidity
    report["dropped_support"] = int(support.sum())
    report["dropped_size"] = int((~support & ~size_ok).sum())
    report["dropped_contrast"] = int((~support & size_ok & ~contrast_ok).sum())
    report["dropped_shape"] = int((~support & size_ok & contrast_ok & ~shape_ok).sum())
    keep = ~support & size_ok & contrast_ok & shape_ok
    report["kept"] = int(keep.sum())
    if report["dropped_support"]:
        log.warning("%s: dropped %d mask(s) covering more than %.0f%% of the image (support or background)",
                    name, report["dropped_support"], 100 * max_area_fraction)
    return relabel(labels, ids[keep]), report


def polarity_warning(image: np.ndarray, typical_px: float, bright: bool, name: str = "") -> str | None:
    """A message when the data contradict the expected object polarity, else ``None``.

    ``image`` has the expected objects bright. Sparse compact objects on a
    support make the band-pass image (Gaussian at 0.12 x the typical diameter
    minus Gaussian at the diameter) positively skewed (skewness 0.5-5 on all
    development images with the right polarity); a clearly negative skewness
    means the objects have the other polarity.
    """
    from scipy import ndimage
    from scipy.stats import skew

    band = ndimage.gaussian_filter(image, max(0.5, 0.12 * typical_px)) - ndimage.gaussian_filter(image, typical_px)
    skewness = float(skew(band.ravel()))
    if skewness < POLARITY_SKEW_LIMIT:
        expected = "brighter" if bright else "darker"
        message = (f"{name}: the image looks like objects {'darker' if bright else 'brighter'} than the support "
                   f"(band-pass skewness {skewness:.2f}), but the recipe expects objects {expected} than the "
                   "support; check the recipe's modality/particle_contrast")
        log.warning("%s", message)
        return message
    return None


def masks_to_labels(masks: Sequence[np.ndarray], scores: Sequence[float], shape: tuple[int, int],
                    duplicate_iou: float = 0.7) -> tuple[np.ndarray, np.ndarray, dict]:
    """Resolve overlapping boolean masks into one label image.

    Masks are taken best score first; a mask overlapping an accepted one by
    IoU >= ``duplicate_iou`` is a duplicate; a mask that covers two or more
    accepted masks for the most part is a container (a cluster or the
    support) and is dropped; otherwise it claims its not-yet-claimed pixels.
    Returns the labels, the scores of the kept masks and a report.
    """
    labels = np.zeros(shape, np.int32)
    kept_scores: list[float] = []
    areas: list[int] = []
    report = {"masks": len(masks), "duplicates": 0, "containers": 0}
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    for index in order:
        mask = np.asarray(masks[index], bool)
        area = int(mask.sum())
        if area == 0:
            continue
        overlap_ids, overlap_counts = np.unique(labels[mask], return_counts=True)
        overlap_counts = overlap_counts[overlap_ids > 0]
        overlap_ids = overlap_ids[overlap_ids > 0]
        if len(overlap_ids):
            other_areas = np.asarray(areas)[overlap_ids - 1]
            iou = overlap_counts / (area + other_areas - overlap_counts)
            if iou.max() >= duplicate_iou:
                report["duplicates"] += 1
                continue
            if int(((overlap_counts / other_areas) > 0.5).sum()) >= 2:
                report["containers"] += 1
                continue
        free = mask & (labels == 0)
        if not free.any():
            report["duplicates"] += 1
            continue
        labels[free] = len(areas) + 1
        areas.append(area)
        kept_scores.append(float(scores[index]))
    return labels, np.asarray(kept_scores, float), report
