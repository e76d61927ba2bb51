"""The typical size in pixels of the objects of an uncalibrated micrograph.

:func:`dominant_diameter_px` looks for the objects at every scale at once, in a
scale-normalised Laplacian-of-Gaussian scale space (Lindeberg 1998, Int. J.
Comput. Vision 30:79), and keeps only the blobs that stand out from what the
image's *own texture* produces at the same scale:

- the texture's reach is read off the opposite polarity: noise, carbon-film
  phase-contrast speckle, support grains and the gaps between them make blobs of
  both signs, particles and atoms make blobs of one sign only (bright in HAADF,
  dark in bright field). At each scale the strongest opposite-sign response
  (as a blob, pooled over the neighbouring scales, and no higher than the
  strongest opposite-sign pixel) is the floor a blob of the objects' sign must
  exceed, and so is :data:`MIN_SIGNIFICANCE` times the robust spread of the
  response at that scale;
- every object is one blob: a blob inside a stronger one (the noisy top of a
  large particle, its lattice fringes) is dropped, and so are blobs within two
  sigmas of the frame edge (scale bars, borders);
- the objects' typical diameter is then the median over *all* remaining blobs,
  each counted once (not the strongest few, which are the largest particles or
  groups of them), as ``2·sqrt(2)·sigma`` (a disk of radius r peaks at
  sigma = r / sqrt(2)) times :data:`PARTICLE_DIAMETER_CORRECTION`. Single atoms
  all have the width of the probe: their typical diameter is the narrowest tenth
  of the blobs (wider blobs there are support bumps and clusters), times
  :data:`ATOM_DIAMETER_CORRECTION`.

The two corrections were set on the development images as a whole (human boxes
of particle exports, the single-atom frames with their calibration removed, and
synthetic frames at ten scales); ``benchmarks/scale_estimate.py`` measures the
result, with the corrections refitted without each image in turn.

Numpy/scipy only; importing this module never imports torch.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError

#: The scale space runs on a copy at most this many pixels on a side (block-averaged).
SCALE_SPACE_MAX_SIDE_PX = 1024
#: Scales: sigma from this many pixels ...
SMALLEST_SIGMA_PX = 0.7
#: ... to this fraction of the short side, in this many geometric steps.
LARGEST_SIGMA_FRACTION = 1 / 8
SCALES = 20
#: Scales of twice this many pixels and more are computed on a copy block-averaged so that they
#: span this to twice this many of its pixels (see :func:`_scale_space`).
PYRAMID_SIGMA_PX = 4.0
#: A blob must exceed this many robust standard deviations of the response at its scale.
MIN_SIGNIFICANCE = 5.0
#: Opposite-sign blobs of this many neighbouring scales on each side set a scale's texture floor.
TEXTURE_SCALE_POOL = 1
#: Particles: median blob diameter times this (development images: human boxes and synthetic disks).
PARTICLE_DIAMETER_CORRECTION = 1.07
#: Single atoms: the NARROWEST_ATOMS quantile of the blob diameters times this.
ATOM_DIAMETER_CORRECTION = 0.84
NARROWEST_ATOMS = 0.1


def _scale_space(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``sigma² · LoG`` at every scale, on one grid.

    Scales of ``2 * PYRAMID_SIGMA_PX`` and more are computed on the image block-averaged by a power of
    two (the normalised response does not change with the grid) and interpolated back: the same
    responses at a small fraction of the cost of kernels hundreds of pixels wide.
    """
    from scipy import ndimage
    from skimage.transform import downscale_local_mean, resize

    factor = 1
    while max(image.shape) / factor > SCALE_SPACE_MAX_SIDE_PX:
        factor *= 2
    small = downscale_local_mean(image, (factor, factor)) if factor > 1 else image
    largest = min(small.shape) * LARGEST_SIGMA_FRACTION
    if largest < 4 * SMALLEST_SIGMA_PX:
        raise InputError(f"image of shape {image.shape} is too small to estimate a blob scale")
    sigmas = np.geomspace(SMALLEST_SIGMA_PX, largest, SCALES)
    levels: dict[int, np.ndarray] = {0: small}
    layers = []
    for sigma in sigmas:
        level = int(math.floor(math.log2(sigma / PYRAMID_SIGMA_PX))) if sigma >= 2 * PYRAMID_SIGMA_PX else 0
        if level not in levels:
            step = 2 ** level
            rows, cols = small.shape[0] // step * step, small.shape[1] // step * step
            levels[level] = downscale_local_mean(small[:rows, :cols], (step, step))
        coarse_sigma = sigma / 2 ** level
        layer = ndimage.gaussian_laplace(levels[level], coarse_sigma) * coarse_sigma ** 2
        if level:
            layer = resize(layer, small.shape, order=1, mode="edge", anti_aliasing=False)
        layers.append(layer.astype(np.float32))
    return np.stack(layers), sigmas, factor


def _blobs(stack: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scale-space maxima (scale index, row, column, response) away from the frame edge."""
    from scipy import ndimage

    peaks = (stack == ndimage.maximum_filter(stack, size=3)) & (stack > 0)
    peaks[0] = peaks[-1] = False  # a maximum at an end scale may lie beyond the range
    k, rows, cols = np.nonzero(peaks)
    margin = 2 * sigmas[k]
    inside = (rows >= margin) & (cols >= margin) & (rows < stack.shape[1] - margin) & (cols < stack.shape[2] - margin)
    k, rows, cols = k[inside], rows[inside], cols[inside]
    return k, rows, cols, stack[k, rows, cols]


def _texture_floor(stack: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Per scale: the response the image's texture reaches (see the module docstring)."""
    spread = np.array([1.4826 * np.median(np.abs(layer - np.median(layer))) for layer in stack])
    k, _, _, response = _blobs(-stack, sigmas)
    strongest_blob = np.zeros(len(sigmas))
    np.maximum.at(strongest_blob, k, response)
    pooled = np.array([strongest_blob[max(0, i - TEXTURE_SCALE_POOL):i + TEXTURE_SCALE_POOL + 1].max()
                       for i in range(len(sigmas))])
    strongest_pixel = np.empty(len(sigmas))
    for i, layer in enumerate(stack):
        margin = int(math.ceil(2 * sigmas[i]))
        inner = layer[margin:-margin, margin:-margin] if 2 * margin < min(layer.shape) else layer
        strongest_pixel[i] = -inner.min()
    return np.maximum(MIN_SIGNIFICANCE * spread, np.minimum(pooled, strongest_pixel))


def _one_per_object(k: np.ndarray, rows: np.ndarray, cols: np.ndarray, response: np.ndarray,
                    sigmas: np.ndarray) -> np.ndarray:
    """Indices of the blobs kept when every blob within sqrt(2)·sigma of a stronger kept one is dropped."""
    from scipy.spatial import cKDTree

    order = np.argsort(response)[::-1]
    points = np.stack([rows[order], cols[order]], axis=1).astype(float)
    radius = math.sqrt(2) * sigmas[k[order]]
    tree = cKDTree(points)
    dropped = np.zeros(len(order), bool)
    kept = []
    for i in range(len(order)):
        if dropped[i]:
            continue
        kept.append(order[i])
        neighbours = np.asarray(tree.query_ball_point(points[i], radius[i]), int)
        dropped[neighbours[neighbours > i]] = True
    return np.asarray(kept, int)


def dominant_diameter_px(image: np.ndarray, bright: bool = True, kind: str = "particles") -> float:
    """Typical diameter (px) of the objects of one polarity that stand out from the image's texture.

    ``kind`` is the recipe's ``sample.kind``: ``atoms`` takes the narrowest blobs (the probe's
    width), anything else the median blob. Raises :class:`InputError` when no blob stands out.
    """
    from .morphology import normalise_image

    stack, sigmas, factor = _scale_space(normalise_image(image))
    if bright:  # a bright blob is a minimum of the Laplacian
        stack = -stack
    floor = _texture_floor(stack, sigmas)
    k, rows, cols, response = _blobs(stack, sigmas)
    significant = response > floor[k]
    if not significant.any():
        raise InputError("no blob of the expected polarity stands out from the image's texture, so its "
                         "scale cannot be estimated")
    k, rows, cols, response = k[significant], rows[significant], cols[significant], response[significant]
    kept = _one_per_object(k, rows, cols, response, sigmas)
    log_diameters = np.log(2 * math.sqrt(2) * sigmas[k[kept]] * factor)
    if kind == "atoms":
        return float(np.exp(np.quantile(log_diameters, NARROWEST_ATOMS)) * ATOM_DIAMETER_CORRECTION)
    return float(np.exp(np.median(log_diameters)) * PARTICLE_DIAMETER_CORRECTION)
