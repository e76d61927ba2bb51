"""Training data of the pix2pix generator: checks, conditioning channels, crops.

numpy only. A training pair is an instance label map (0 = background) and the
real micrograph it was extracted from, on the same pixel grid (the recipe's
working pixel size). The network sees *conditioning channels* computed from the
label map alone, so that a label map drawn by the layout sampler is rendered
exactly like one extracted from a real image:

- foreground: 1 inside objects, 0 outside;
- boundary (optional): 1 on the inner boundary of every object, so touching
  objects stay distinguishable;
- relative thickness (optional): projected thickness of a sphere filling each
  object, ``sqrt(e (2R - e)) / R`` with ``e`` the distance to the object's
  edge and ``R`` its largest value in the object (chord length of a sphere of
  radius R at distance R - e from its centre, divided by the diameter). It
  carries the "thicker in the middle" contrast of particles in HAADF (mass
  thickness), independent of pixel size.

Images are normalised per image: the 1st..99th intensity percentile maps to
-1..1 (linear; nothing is clipped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from emcopilot.core.errors import InputError

#: Fewer pairs than this cannot train a generator that generalises.
MIN_PAIRS = 2
#: Intensity percentiles mapped to -1 and 1.
PERCENTILES = (1.0, 99.0)


def label_array(value: Any, what: str) -> np.ndarray:
    """A layout (``.labels``) or an array -> 2-D integer label image."""
    labels = getattr(value, "labels", value)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise InputError(f"{what}: a label map must be a 2-D image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if labels.dtype == bool:
            labels = labels.astype(np.int32)
        else:
            raise InputError(f"{what}: a label map must hold integer instance ids, got {labels.dtype}")
    if labels.min() < 0:
        raise InputError(f"{what}: label ids must be >= 0 (0 = background), found {int(labels.min())}")
    return labels.astype(np.int32, copy=False)


def condition_channels(labels: np.ndarray, boundary: bool, thickness: bool) -> np.ndarray:
    """(C, H, W) float32 conditioning channels of one label map (see the module docstring)."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    foreground = labels > 0
    channels = [foreground.astype(np.float32)]
    edges = find_boundaries(labels, mode="inner") & foreground
    if boundary:
        channels.append(edges.astype(np.float32))
    if thickness:
        inside = foreground & ~edges
        distance = ndimage.distance_transform_edt(inside) + foreground  # 1 on the edge, grows inwards
        count = int(labels.max())
        radius = np.zeros(count + 1)
        if count:
            radius[1:] = ndimage.maximum(distance, labels, index=np.arange(1, count + 1))
        radius_map = radius[labels]
        relative = np.zeros(labels.shape, dtype=np.float32)
        relative[foreground] = np.sqrt(distance[foreground] * (2 * radius_map[foreground] - distance[foreground])) \
            / radius_map[foreground]
        channels.append(relative)
    return np.stack(channels)


def intensity_bounds(image: np.ndarray, what: str) -> tuple[float, float]:
    low, high = (float(value) for value in np.percentile(image, PERCENTILES))
    if not high > low:
        raise InputError(f"{what}: the image is flat (its 1st and 99th intensity percentiles are both {low:g}); "
                         "it has no contrast to learn")
    return low, high


def normalise(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (2.0 * (image - low) / (high - low) - 1.0).astype(np.float32)


def denormalise(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (low + (image + 1.0) * 0.5 * (high - low)).astype(np.float32)


@dataclass
class Pair:
    """One prepared pair: conditioning channels and normalised image, with the held-back band."""

    condition: np.ndarray  # (C, H, W) float32
    image: np.ndarray  # (H, W) float32, normalised
    bounds: tuple[float, float]
    train_rows: int  # rows [0, train_rows) train; the rest is held back for validation


def prepare_pairs(label_maps: Sequence[Any], images: Sequence[Any], *, crop_px: int, holdout_fraction: float,
                  boundary: bool, thickness: bool) -> list[Pair]:
    """Check and prepare training pairs; raise :class:`InputError` naming the bad pair.

    Each image keeps its bottom ``max(crop_px, holdout_fraction * rows)`` rows
    for validation, so an image needs at least ``2 * crop_px`` rows and
    ``crop_px`` columns.
    """
    if len(label_maps) != len(images):
        raise InputError(f"{len(label_maps)} label maps but {len(images)} images; pass one label map per image")
    if len(images) < MIN_PAIRS:
        raise InputError(f"pix2pix needs at least {MIN_PAIRS} (label map, image) pairs to train, got {len(images)}")
    pairs = []
    for index, (labels, micrograph) in enumerate(zip(label_maps, images)):
        name = getattr(micrograph, "name", "") or f"image {index}"
        what = f"pair {index} ({name})"
        labels = label_array(labels, what)
        pixels = micrograph if isinstance(micrograph, np.ndarray) else getattr(micrograph, "data", micrograph)
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 2:
            raise InputError(f"{what}: the image must be 2-D, got shape {pixels.shape}")
        if labels.shape != pixels.shape:
            raise InputError(f"{what}: label map is {labels.shape[0]}x{labels.shape[1]} px but the image is "
                             f"{pixels.shape[0]}x{pixels.shape[1]} px; they must share one pixel grid")
        if not (labels > 0).any():
            raise InputError(f"{what}: the label map is empty (no object); drop the pair or fix the prior")
        if not np.isfinite(pixels).all():
            raise InputError(f"{what}: {int((~np.isfinite(pixels)).sum())} pixels are NaN or infinite")
        rows, columns = pixels.shape
        held_back = max(crop_px, int(round(holdout_fraction * rows)))
        if rows - held_back < crop_px or columns < crop_px:
            raise InputError(f"{what}: the image is {rows}x{columns} px; training on {crop_px} px crops with a "
                             f"held-back validation band needs at least {crop_px + held_back} rows and {crop_px} "
                             "columns (lower crop_px or pass larger images)")
        bounds = intensity_bounds(pixels, what)
        pairs.append(Pair(condition_channels(labels, boundary, thickness), normalise(pixels, *bounds), bounds,
                          rows - held_back))
    return pairs


def random_batch(pairs: Sequence[Pair], batch_size: int, crop_px: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random training crops with a random flip and rot90: ``(B, C, S, S)``, ``(B, 1, S, S)``."""
    conditions, targets = [], []
    for _ in range(batch_size):
        pair = pairs[rng.integers(len(pairs))]
        row = rng.integers(pair.train_rows - crop_px + 1)
        column = rng.integers(pair.image.shape[1] - crop_px + 1)
        stack = np.concatenate([pair.condition[:, row:row + crop_px, column:column + crop_px],
                                pair.image[None, row:row + crop_px, column:column + crop_px]])
        stack = np.rot90(stack, k=int(rng.integers(4)), axes=(1, 2))
        if rng.integers(2):
            stack = stack[:, :, ::-1]
        conditions.append(stack[:-1])
        targets.append(stack[-1:])
    return np.ascontiguousarray(conditions, dtype=np.float32), np.ascontiguousarray(targets, dtype=np.float32)


def validation_tiles(pairs: Sequence[Pair], crop_px: int, count: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping crops of the held-back bands (at most ``count``, a seeded choice).

    Flat crops (1st and 99th percentile equal, e.g. saturated vacuum) carry no
    contrast to score and are left out.
    """
    tiles = []
    for pair in pairs:
        rows = pair.image.shape[0]
        for row in range(pair.train_rows, rows - crop_px + 1, crop_px):
            for column in range(0, pair.image.shape[1] - crop_px + 1, crop_px):
                low, high = np.percentile(pair.image[row:row + crop_px, column:column + crop_px], PERCENTILES)
                if high > low:
                    tiles.append((pair, row, column))
    if not tiles:
        raise InputError("every held-back validation crop is flat (no contrast); pass images with contrast "
                         "in their bottom rows or raise holdout_fraction")
    if len(tiles) > count:
        tiles = [tiles[index] for index in sorted(rng.choice(len(tiles), size=count, replace=False))]
    conditions = np.stack([p.condition[:, r:r + crop_px, c:c + crop_px] for p, r, c in tiles])
    targets = np.stack([p.image[None, r:r + crop_px, c:c + crop_px] for p, r, c in tiles])
    return conditions.astype(np.float32), targets.astype(np.float32)
