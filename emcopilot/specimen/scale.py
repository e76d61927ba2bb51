"""Resampling between a micrograph's pixel size and a model's working pixel size.

Models work at a recipe's ``pixel_size_nm`` (nm/px). An image recorded at
``pixel_size_nm = p`` is resampled by ``factor = p / working`` (a factor > 1
means the working grid has more pixels), processed, and its instances are
mapped back onto the micrograph's own grid: label images by nearest
neighbour, points exactly (pixel centres at integer coordinates).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..io.readers import MAX_PIXELS

#: Resampling factors within this fraction of 1 are treated as 1: the image is processed on its own
#: grid, as if at the working pixel size. Linear interpolation by a factor near 1 (e.g. 0.0293 nm/px
#: onto 0.03 nm/px) averages neighbouring pixels with a weight that drifts across the frame, so the
#: shot noise's variance swings between 1 and 1/2 in bands 1/|1 - factor| px wide, a texture no
#: synthetic training image has. 3 % is about the accuracy of a magnification calibration and well
#: inside the segmenter's training scale jitter (±15 %); sizes are still reported with the
#: micrograph's own pixel size.
FACTOR_TOLERANCE = 0.03

#: Least side, in working pixels, of a micrograph a recipe can learn from: what the imaging-condition
#: estimators (noise blocks, spectra, scan-line statistics) need; they use this same value.
MIN_WORKING_SIDE_PX = 64


def working_side_px(shape: tuple[int, int], pixel_size_nm: float, working_pixel_size_nm: float) -> float:
    """The shorter side of an image of ``shape`` at ``pixel_size_nm`` once resampled to the working scale."""
    return min(shape) * pixel_size_nm / working_pixel_size_nm


def too_small_message(name: str, shape: tuple[int, int], pixel_size_nm: float, working_pixel_size_nm: float,
                      recipe_name: str | None = None) -> str:
    """Why a micrograph is too small for a recipe's working scale, and the built-in recipes it fits."""
    side = working_side_px(shape, pixel_size_nm, working_pixel_size_nm)
    fits = recipes_that_fit(shape, pixel_size_nm)
    which = f"recipe {recipe_name!r}" if recipe_name else "the recipe"
    hint = (f"; recipes whose working scale fits it: {', '.join(fits)}" if fits else
            "; no built-in recipe's working scale fits it (give a recipe a finer working_pixel_size_nm)")
    return (f"{name}: {shape[1]}x{shape[0]} px at {pixel_size_nm:.4g} nm/px is {side:.0f} px across at the working "
            f"scale of {which} ({working_pixel_size_nm:g} nm/px), which needs at least {MIN_WORKING_SIDE_PX}"
            f"{hint}")


def recipes_that_fit(shape: tuple[int, int], pixel_size_nm: float, limit: int = 3) -> list[str]:
    """Named recipes at whose working scale an image is at least :data:`MIN_WORKING_SIDE_PX` across,
    closest in scale to the image first, as ``name (working nm/px)``."""
    import math

    from ..core.recipe import load_recipe, recipe_index
    found = []
    for name in recipe_index():
        try:
            working = float(load_recipe(name).sample.working_pixel_size_nm)
        except Exception:  # noqa: BLE001 - a broken recipe is reported where it is used, not here
            continue
        if working_side_px(shape, pixel_size_nm, working) >= MIN_WORKING_SIDE_PX:
            found.append((abs(math.log(working / pixel_size_nm)), f"{name} ({working:g} nm/px)"))
    return [label for _, label in sorted(found)[:limit]]


@dataclass(frozen=True)
class Scaling:
    """How an image maps onto the working grid."""

    original_shape: tuple[int, int]
    working_shape: tuple[int, int]
    pixel_size_nm: float | None
    working_pixel_size_nm: float
    calibrated: bool

    @property
    def factor(self) -> float:
        """Working pixels per original pixel (mean of both axes)."""
        return float(np.mean(np.divide(self.working_shape, self.original_shape)))

    @property
    def resampled(self) -> bool:
        return self.working_shape != self.original_shape

    @property
    def grid_pixel_size_nm(self) -> float:
        """The pixel size of the grid the image is processed on: its own when it is kept as it is
        (within :data:`FACTOR_TOLERANCE`), else the working one."""
        return self.pixel_size_nm if self.pixel_size_nm and not self.resampled else self.working_pixel_size_nm

    def as_dict(self) -> dict:
        return {"pixel_size_nm": self.pixel_size_nm, "working_pixel_size_nm": self.working_pixel_size_nm,
                "calibrated": self.calibrated, "scale_factor": self.factor,
                "original_shape": list(self.original_shape), "working_shape": list(self.working_shape)}


def plan_scaling(shape: tuple[int, int], pixel_size_nm: float | None, working_pixel_size_nm: float,
                 name: str = "micrograph") -> Scaling:
    """The working-grid shape of an image; uncalibrated images, and images within
    :data:`FACTOR_TOLERANCE` of the working pixel size, stay as they are.

    Raises :class:`InputError` when the working grid would exceed
    :data:`emcopilot.io.readers.MAX_PIXELS` (e.g. a 0.5 nm/px overview at 0.005 nm/px).
    """
    if working_pixel_size_nm <= 0:
        raise InputError(f"working pixel size must be positive, got {working_pixel_size_nm} nm")
    shape = (int(shape[0]), int(shape[1]))
    if pixel_size_nm is None:
        return Scaling(shape, shape, None, working_pixel_size_nm, calibrated=False)
    factor = float(pixel_size_nm) / float(working_pixel_size_nm)
    if abs(factor - 1.0) < FACTOR_TOLERANCE:
        return Scaling(shape, shape, float(pixel_size_nm), working_pixel_size_nm, calibrated=True)
    working = (max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor)))
    if working[0] * working[1] > MAX_PIXELS:
        raise InputError(f"{name}: at {pixel_size_nm:.4g} nm/px, resampling to the model's "
                         f"{working_pixel_size_nm:.4g} nm/px would give {working[0]}x{working[1]} pixels "
                         f"(more than {MAX_PIXELS}); use a model trained for this magnification or crop the image")
    return Scaling(shape, working, float(pixel_size_nm), working_pixel_size_nm, calibrated=True)


def to_working(image: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Resample an image onto the working grid (linear; anti-aliased when shrinking)."""
    if not scaling.resampled:
        return np.asarray(image, np.float32)
    from skimage.transform import resize

    shrinking = scaling.factor < 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resize(np.asarray(image, np.float32), scaling.working_shape, order=1, mode="reflect",
                      anti_aliasing=shrinking, preserve_range=True).astype(np.float32)


def to_working_labels(labels: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Resample a label image onto the working grid (nearest neighbour)."""
    return _resize_labels(labels, scaling.working_shape) if scaling.resampled else labels


def labels_to_original(labels: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Map a working-grid label image back onto the micrograph's grid (nearest neighbour)."""
    return _resize_labels(labels, scaling.original_shape) if scaling.resampled else labels


def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by index lookup (exact label values, pixel-centre aligned)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def points_to_original(points: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Map (row, column) points from the working grid onto the micrograph's grid."""
    return _between_grids(points, scaling, scaling.working_shape, scaling.original_shape)


def points_to_working(points: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Map (row, column) points from the micrograph's grid onto the working grid."""
    return _between_grids(points, scaling, scaling.original_shape, scaling.working_shape)


def _between_grids(points: np.ndarray, scaling: Scaling, source: tuple[int, int],
                   target: tuple[int, int]) -> np.ndarray:
    """Pixel centres map onto pixel centres: ``(p + 0.5) * target / source - 0.5``."""
    points = np.asarray(points, float).reshape(-1, 2)
    if not scaling.resampled:
        return points
    return (points + 0.5) * np.divide(target, source) - 0.5
