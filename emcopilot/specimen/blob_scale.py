"""The typical size in pixels of the objects of an uncalibrated micrograph.

:func:`dominant_diameter_px` looks for the objects at every scale at once, in a
scale-normalised Laplacian-of-Gaussian scale space (Lindeberg 1998, Int. J.
Comput. Vision 30:79), and keeps only the blobs that stand out from what the
image's *own texture* produces at the same scale:

- candidates are the scale-space maxima above :data:`MIN_SIGNIFICANCE` robust
  standard deviations of the response at their scale, one per object: a blob
  within :data:`OBJECT_RADIUS_SIGMAS` sigmas of a stronger one (the noisy top of
  a large particle, its lattice fringes, the fine-scale ripples along its edge)
  is part of it. Blobs near the frame edge take part in that and are dropped
  afterwards (scale bars, borders, particles cut by the edge);
- the texture's reach is read off the opposite polarity: noise, carbon-film
  phase-contrast speckle, support grains and the gaps between them make blobs of
  both signs, particles and atoms make blobs of one sign only (bright in HAADF,
  dark in bright field). A candidate stands out when it is stronger than the
  strongest opposite-sign blob of its scale and the neighbouring ones (and no
  higher than the strongest opposite-sign pixel), or when it belongs to a
  population the texture cannot account for: at its scale, the blobs of the
  objects' sign at least as strong outnumber the opposite-sign ones (per scale,
  over the same neighbourhood of scales) so that these would explain at most
  :data:`TEXTURE_FALSE_DISCOVERY` of them, counted with one added as the
  knockoff+ filter does (Barber & Candes 2015, Ann. Stat. 43:2055), and, for
  particles, are stronger than :data:`POPULATION_MIN_SIGNIFICANCE` spreads. The
  first rule finds a few strong particles, the second many faint ones on a
  strongly textured support;
- each blob's scale is refined between the sampled ones (the vertex of a
  parabola through its response at the scales either side);
- the objects' typical diameter is then the median over *all* remaining blobs,
  each counted once (not the strongest few, which are the largest particles or
  groups of them), as ``2·sqrt(2)·sigma`` (a disk of radius r peaks at
  sigma = r / sqrt(2)) times :data:`PARTICLE_DIAMETER_CORRECTION`. Single atoms
  all have the width of the probe: their typical diameter is the narrowest tenth
  of the blobs (wider blobs there are support bumps and clusters), times
  :data:`ATOM_DIAMETER_CORRECTION`. Sub-nanometre clusters whose atoms are
  resolved make one blob per atom: blobs within :data:`CLUSTER_JOIN_DIAMETERS`
  of each other are first joined into one cluster each (:func:`cluster_diameters_px`).

The two corrections, :data:`TEXTURE_FALSE_DISCOVERY` and
:data:`POPULATION_MIN_SIGNIFICANCE` were set on the development images as a
whole (human boxes of particle exports, the single-atom frames with their
calibration removed, and synthetic frames at ten scales; the median error moves
by at most two points for a share of 0.1-0.35 and a significance of 6-10, the
worst image by much more); ``benchmarks/scale_estimate.py`` measures the result,
with the corrections refitted without each image in turn.

Numpy/scipy only; importing this module never imports torch.
"""
from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError

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
#: A blob within this many of its sigmas of a stronger one is part of the same object (a disk of
#: radius r peaks at sigma = r / sqrt(2), so this reaches 1.4 r: its edge, not its neighbours).
OBJECT_RADIUS_SIGMAS = 2.0
#: Opposite-sign blobs of this many neighbouring scales on each side set a scale's texture floor.
TEXTURE_SCALE_POOL = 1
#: A population of blobs at one scale stands out when the texture accounts for at most this share ...
TEXTURE_FALSE_DISCOVERY = 0.2
#: ... and, for particles, its members exceed this many robust standard deviations of the response at
#: their scale. Shot noise at a low dose is skewed (Poisson), so pixel-sized specks of the bright sign
#: outnumber the dark ones and would pass the count alone; particles are larger and stronger than
#: that. Single atoms are themselves at the probe's, and so the noise's, scale and faint: their
#: population needs only :data:`MIN_SIGNIFICANCE`.
POPULATION_MIN_SIGNIFICANCE = 7.0
#: Particles: median blob diameter times this (development images: human boxes and synthetic disks).
PARTICLE_DIAMETER_CORRECTION = 1.12
#: Single atoms: the NARROWEST_ATOMS quantile of the blob diameters times this.
ATOM_DIAMETER_CORRECTION = 0.89
NARROWEST_ATOMS = 0.1
#: Blobs closer than this many of their mean diameters are atoms of one cluster (``kind`` ``clusters``)
CLUSTER_JOIN_DIAMETERS = 3.0


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


Blobs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # scale index, row, column, response


def _maxima(stack: np.ndarray) -> Blobs:
    """Positive scale-space maxima, end scales excluded (a maximum there may lie beyond the range)."""
    from scipy import ndimage

    peaks = (stack == ndimage.maximum_filter(stack, size=3)) & (stack > 0)
    peaks[0] = peaks[-1] = False
    k, rows, cols = np.nonzero(peaks)
    return k, rows, cols, stack[k, rows, cols]


def _inside(blobs: Blobs, sigmas: np.ndarray, shape: tuple[int, int]) -> Blobs:
    """The blobs at least two of their sigmas from the frame edge."""
    k, rows, cols, response = blobs
    margin = 2 * sigmas[k]
    inside = (rows >= margin) & (cols >= margin) & (rows < shape[0] - margin) & (cols < shape[1] - margin)
    return k[inside], rows[inside], cols[inside], response[inside]


def _blobs(stack: np.ndarray, sigmas: np.ndarray) -> Blobs:
    """Scale-space maxima away from the frame edge."""
    return _inside(_maxima(stack), sigmas, stack.shape[1:])


def _candidates(stack: np.ndarray, sigmas: np.ndarray, spread: np.ndarray) -> Blobs:
    """Maxima above :data:`MIN_SIGNIFICANCE` spreads of their scale, one per object, away from the edge."""
    k, rows, cols, response = _maxima(stack)
    strong = response > MIN_SIGNIFICANCE * spread[k]
    k, rows, cols, response = k[strong], rows[strong], cols[strong], response[strong]
    kept = _one_per_object(k, rows, cols, response, sigmas)
    return _inside((k[kept], rows[kept], cols[kept], response[kept]), sigmas, stack.shape[1:])


def _spread(stack: np.ndarray) -> np.ndarray:
    """Per scale: the robust standard deviation of the response."""
    return np.array([1.4826 * np.median(np.abs(layer - np.median(layer))) for layer in stack])


def _texture_floor(stack: np.ndarray, sigmas: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per scale: the response the strongest of the image's texture reaches (see the module docstring)."""
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


def _population_floor(candidates: Blobs, opposite: Blobs, scales: int) -> np.ndarray:
    """Per scale: the least response from which the candidates at that scale outnumber the opposite-sign
    candidates (per scale, over :data:`TEXTURE_SCALE_POOL` scales either side) so that these account for
    at most :data:`TEXTURE_FALSE_DISCOVERY` of them, counted knockoff+-style with one added; ``inf``
    where no response does. Scales whose neighbourhood runs past an end scale (which holds no
    maxima) are left to the strongest-texture floor."""
    k, _, _, response = candidates
    k_opposite, _, _, response_opposite = opposite
    floor = np.full(scales, np.inf)
    pool = TEXTURE_SCALE_POOL
    for i in range(1 + pool, scales - 1 - pool):
        texture = np.sort(response_opposite[(k_opposite >= i - pool) & (k_opposite <= i + pool)])
        objects = np.sort(response[k == i])
        objects_above = len(objects) - np.arange(len(objects))  # candidates at least as strong as each
        texture_above = len(texture) - np.searchsorted(texture, objects, side="left")
        explained = (1 + texture_above) / (2 * pool + 1) <= TEXTURE_FALSE_DISCOVERY * objects_above
        if explained.any():
            floor[i] = objects[np.argmax(explained)]
    return floor


def _one_per_object(k: np.ndarray, rows: np.ndarray, cols: np.ndarray, response: np.ndarray,
                    sigmas: np.ndarray) -> np.ndarray:
    """Indices of the blobs kept when every blob within :data:`OBJECT_RADIUS_SIGMAS` sigmas of a stronger
    kept one is dropped."""
    from scipy.spatial import cKDTree

    order = np.argsort(response)[::-1]
    points = np.stack([rows[order], cols[order]], axis=1).astype(float)
    radius = OBJECT_RADIUS_SIGMAS * sigmas[k[order]]
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


def _refined_log_sigmas(stack: np.ndarray, sigmas: np.ndarray, k: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray) -> np.ndarray:
    """Each blob's log sigma between the sampled scales: the vertex of the parabola through its
    response at the scales either side (as SIFT refines its keypoints' scale, Lowe 2004, Int. J.
    Comput. Vision 60:91). Without it every size is one of :data:`SCALES` values a factor
    ``(largest / smallest) ** (1 / (SCALES - 1))`` (about 1.3) apart."""
    below, here, above = stack[k - 1, rows, cols], stack[k, rows, cols], stack[k + 1, rows, cols]
    curvature = below - 2 * here + above
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = np.where(curvature < 0, 0.5 * (below - above) / curvature, 0.0)
    step = math.log(sigmas[1] / sigmas[0])
    return np.log(sigmas[k]) + np.clip(offset, -0.5, 0.5) * step


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


def blob_diameters_px(image: np.ndarray, bright: bool = True, kind: str = "particles") -> np.ndarray:
    """The diameters (px, ``2·sqrt(2)·sigma``, uncorrected) of the blobs of one polarity that stand out
    from the image's texture, one per object. Raises :class:`InputError` when none does."""
    stack, sigmas, factor = _scale_space(normalise_image(image))
    if bright:  # a bright blob is a minimum of the Laplacian
        stack = -stack
    spread = _spread(stack)
    candidates = _candidates(stack, sigmas, spread)
    least = MIN_SIGNIFICANCE if kind == "atoms" else POPULATION_MIN_SIGNIFICANCE
    population = np.maximum(least * spread,
                            _population_floor(candidates, _candidates(-stack, sigmas, spread), len(sigmas)))
    floor = np.minimum(_texture_floor(stack, sigmas, spread), population)
    k, rows, cols, response = candidates
    significant = response >= floor[k]
    if not significant.any():
        raise InputError("no blob of the expected polarity stands out from the image's texture, so its "
                         "scale cannot be estimated")
    k, rows, cols = k[significant], rows[significant], cols[significant]
    diameters = np.exp(_refined_log_sigmas(stack, sigmas, k, rows, cols)) * (2 * math.sqrt(2) * factor)
    if kind == "clusters":
        return cluster_diameters_px(diameters, np.stack([rows, cols], 1).astype(float) * factor)
    return diameters


def cluster_diameters_px(diameters: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Blobs grouped into clusters: one diameter per cluster.

    Where the atoms of sub-nanometre clusters are resolved, each atom is a blob of its own and the
    median blob is an atom, not a cluster (a factor 2-4 too small). Blobs closer than
    :data:`CLUSTER_JOIN_DIAMETERS` of their mean diameter are one cluster (atoms one bond apart,
    0.28 nm for Pt, against an apparent atom width of 0.08-0.2 nm); a cluster's diameter is its
    Feret extent, the largest distance between its blobs' centres plus their mean diameter. A
    lone blob (an unresolved cluster, a single atom) keeps its own.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    count = len(diameters)
    if count < 2:
        return diameters
    pairs = cKDTree(centres).query_pairs(CLUSTER_JOIN_DIAMETERS * float(diameters.max()), output_type="ndarray")
    if len(pairs):
        gaps = np.hypot(*(centres[pairs[:, 0]] - centres[pairs[:, 1]]).T)
        pairs = pairs[gaps < CLUSTER_JOIN_DIAMETERS * 0.5 * (diameters[pairs[:, 0]] + diameters[pairs[:, 1]])]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count)) if len(pairs) \
        else coo_matrix((count, count))
    groups, group_of = connected_components(graph, directed=False)
    out = np.empty(groups)
    for group in range(groups):
        members = np.flatnonzero(group_of == group)
        if len(members) == 1:
            out[group] = diameters[members[0]]
            continue
        points = centres[members]
        extent = float(np.max(np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1))))
        out[group] = extent + float(diameters[members].mean())
    return out


def typical_diameter_px(diameters_px: np.ndarray, kind: str = "particles") -> float:
    """The objects' typical diameter from their blobs: the median (particles) or the narrowest
    :data:`NARROWEST_ATOMS` quantile (``kind`` ``atoms``), times the diameter correction."""
    log_diameters = np.log(np.asarray(diameters_px, float))
    if kind == "atoms":
        return float(np.exp(np.quantile(log_diameters, NARROWEST_ATOMS)) * ATOM_DIAMETER_CORRECTION)
    return float(np.exp(np.median(log_diameters)) * PARTICLE_DIAMETER_CORRECTION)


def dominant_diameter_px(image: np.ndarray, bright: bool = True, kind: str = "particles") -> float:
    """Typical diameter (px) of the objects of one polarity that stand out from the image's texture.

    ``kind`` is the recipe's ``sample.kind``: ``atoms`` takes the narrowest blobs (the probe's
    width), ``clusters`` the median cluster of joined blobs, anything else the median blob. Raises
    :class:`InputError` when no blob stands out.
    """
    return typical_diameter_px(blob_diameters_px(image, bright, kind), kind)
