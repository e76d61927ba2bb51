"""From network outputs to instances, and from instances to training targets.

Particle mode: a foreground probability and a normalised distance map (1 at
each particle's centre, falling to 0 at its border) -> one seed per
maximum of the distance map deep enough (h-maxima) -> marker watershed inside
the foreground. Atom mode: a Gaussian heatmap -> local maxima -> points, small
disks as labels, optional grouping of close atoms into clusters.
"""
from __future__ import annotations

import math

import numpy as np


# --------------------------------------------------------------------------- targets

def particle_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask and per-instance distance to the border, normalised to 1 at the centre."""
    from scipy import ndimage

    labels = np.asarray(labels)
    foreground = (labels > 0).astype(np.float32)
    distance = np.zeros(labels.shape, np.float32)
    for index, window in enumerate(ndimage.find_objects(labels), 1):
        if window is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in window)
        inside = labels[padded] == index
        edt = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        if edt.max() > 0:
            distance[padded][inside] = (edt / edt.max())[inside]
    return foreground, distance


def atom_heatmap(points: np.ndarray, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-height Gaussians of width ``sigma_px`` at (row, column) points; overlaps take the maximum."""
    heatmap = np.zeros(shape, np.float32)
    radius = max(1, int(np.ceil(3 * sigma_px)))
    offsets = np.arange(-radius, radius + 1)
    for row, col in np.asarray(points, float).reshape(-1, 2):
        r0, c0 = int(round(row)), int(round(col))
        rows, cols = r0 + offsets, c0 + offsets
        keep_r = (rows >= 0) & (rows < shape[0])
        keep_c = (cols >= 0) & (cols < shape[1])
        if not keep_r.any() or not keep_c.any():
            continue
        gauss_r = np.exp(-((rows[keep_r] - row) ** 2) / (2 * sigma_px ** 2))
        gauss_c = np.exp(-((cols[keep_c] - col) ** 2) / (2 * sigma_px ** 2))
        block = np.ix_(rows[keep_r], cols[keep_c])
        heatmap[block] = np.maximum(heatmap[block], np.outer(gauss_r, gauss_c))
    return heatmap


def points_of(labels: np.ndarray | None, points: np.ndarray | None) -> np.ndarray:
    """Atom centres (row, column): the points, else the centroids of the labels."""
    from scipy import ndimage

    if points is not None:
        return np.asarray(points, float).reshape(-1, 2)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return np.array(ndimage.center_of_mass(labels > 0, labels, ids), float).reshape(-1, 2)


# --------------------------------------------------------------------------- post-processing

#: 8-connectivity: foreground blobs and seeds as one object where they touch at a corner
_EIGHT = np.ones((3, 3), bool)
#: :func:`expand_labels_tiled` works on tiles this many pixels on a side (plus a margin)
GROW_TILE_PX = 1024


def particles_from_maps(foreground: np.ndarray, distance: np.ndarray, *, foreground_threshold: float,
                        seed_dynamic: float, min_area_px: float,
                        seed_threshold: float = 0.0, grow_px: float = 0.0,
                        min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Watershed instances from foreground and distance probabilities: ``(labels, scores)``.

    Each particle grows from one maximum of the predicted (normalised) distance
    map inside the foreground. A maximum seeds a particle only if its dynamic
    is at least ``seed_dynamic``: from it one must descend by that much before
    reaching a higher maximum (h-maxima). Two touching particles are separated
    by a saddle near 0 at their contact, while the ripples of an imperfect
    prediction inside one particle are shallow; a fixed level on the distance
    instead splits a particle wherever the ripples cross it, and loses small
    particles whose predicted centre stays below it. ``seed_threshold``
    optionally also requires the seed's height. Foreground blobs without a
    seed are particles too. ``grow_px`` then grows every particle outward by
    that distance, never into a neighbour (``skimage.segmentation.expand_labels``);
    the scores (each particle's mean foreground probability) stay those of the
    particle before it grew. Particles smaller than ``min_area_px`` or scoring
    below ``min_score`` are dropped first.

    Memory: the seeds and the flooding are computed one foreground blob at a
    time in its bounding box (a flood never leaves its blob, so this is the
    whole-frame watershed, ids included) and the growth tile by tile, so
    beyond the label image the working memory follows the largest blob and
    the tile, not the frame.
    """
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential, watershed

    mask = foreground >= foreground_threshold
    blobs, _ = ndimage.label(mask, structure=_EIGHT)
    boxes = ndimage.find_objects(blobs)
    seeds = _seeds(distance, blobs, boxes, seed_dynamic, seed_threshold)
    markers, n_markers = ndimage.label(seeds, structure=_EIGHT)  # numbered over the frame, as one flood would
    del seeds
    labels = np.zeros(mask.shape, np.int32)
    for index, box in enumerate(boxes, start=1):
        if box is None or not n_markers:
            continue
        region = blobs[box] == index
        crop_markers = np.where(region, markers[box], 0)
        if crop_markers.any():
            inside = np.where(region, distance[box], 0).astype(np.float64)
            labels[box][region] = watershed(-inside, crop_markers, mask=region)[region]
    del markers, blobs
    # foreground blobs without a seed are objects too (4-connected, as the flood's pixels are)
    orphans, n_orphans = ndimage.label(mask & (labels == 0))
    if n_orphans:
        unseeded = orphans > 0
        labels[unseeded] = orphans[unseeded] + labels.max()
    del orphans, mask
    if labels.max() == 0:
        return labels, np.zeros(0, np.float32)
    areas = np.bincount(labels.ravel())
    means = np.concatenate([[0.0], ndimage.mean(foreground, labels, np.arange(1, len(areas)))])
    keep = (areas > 0) & (areas >= min_area_px) & (means >= min_score)
    keep[0] = False
    labels[~keep[labels]] = 0
    labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)  # kept labels stay in order: scores follow
    count = int(labels.max())
    scores = means[keep]
    if grow_px > 0 and count:
        labels = expand_labels_tiled(labels, grow_px)
    return labels, np.asarray(scores, np.float32)


def _seeds(distance: np.ndarray, blobs: np.ndarray, boxes: list, dynamic: float, threshold: float) -> np.ndarray:
    """The watershed's seed pixels: per foreground blob, the maxima of the distance map of at least
    ``dynamic`` depth (every pixel of the blob with ``dynamic`` 0), at least ``threshold`` high.

    The distance is 0 outside the blob, so a reconstruction by dilation never crosses from one blob
    to another: in each blob's box it finds the maxima it would find on the whole frame, at a
    fraction of the cost (it sorts every pixel it is given; particles cover a few per cent of a frame)."""
    seeds = np.zeros(blobs.shape, bool)
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if dynamic > 0:  # a pixel of margin keeps the blob's rim off the crop's edge, which local_maxima skips
            box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        region = blobs[box] == index
        inside = np.where(region, distance[box], 0).astype(np.float64)
        found = _blob_h_maxima(inside, dynamic) if dynamic > 0 else inside > 0
        seeds[box] |= found & region & (inside >= threshold)
    return seeds


def _blob_h_maxima(crop: np.ndarray, dynamic: float) -> np.ndarray:
    """Regional maxima of at least ``dynamic`` depth of one blob's crop (0 outside the blob)."""
    from skimage.morphology import local_maxima, reconstruction
    return local_maxima(reconstruction(crop - dynamic, crop, method="dilation"), connectivity=2, allow_borders=True)


def expand_labels_tiled(labels: np.ndarray, distance_px: float, tile_px: int = GROW_TILE_PX) -> np.ndarray:
    """``skimage.segmentation.expand_labels(labels, distance_px)``, one tile at a time.

    Each tile is expanded with a margin wider than the growth, so every pixel
    sees every label that can reach it; the distance transform behind the
    growth (a float and two indices per pixel) then takes a tile's memory,
    not a frame's.
    """
    from skimage.segmentation import expand_labels

    margin = int(math.ceil(distance_px)) + 2
    out = np.zeros_like(labels)
    rows, cols = labels.shape
    for r0 in range(0, rows, tile_px):
        for c0 in range(0, cols, tile_px):
            r1, c1 = min(rows, r0 + tile_px), min(cols, c0 + tile_px)
            a0, b0 = max(0, r0 - margin), max(0, c0 - margin)
            crop = labels[a0:min(rows, r1 + margin), b0:min(cols, c1 + margin)]
            if not crop.any():
                continue
            grown = expand_labels(crop, distance_px)
            out[r0:r1, c0:c1] = grown[r0 - a0:r1 - a0, c0 - b0:c1 - b0]
    return out


def add_unmatched(labels: np.ndarray, scores: np.ndarray, extra: np.ndarray, extra_scores: np.ndarray, *,
                  max_box_iou: float = 0.1) -> tuple[np.ndarray, np.ndarray, int]:
    """``labels`` with the objects of ``extra`` that overlap none of them added: ``(labels, scores, added)``.

    An object of ``extra`` (a second segmentation of the same grid, e.g. at
    another scale) is added when its bounding box overlaps every box of
    ``labels`` by an IoU below ``max_box_iou``; it takes the pixels of its own
    that no object of ``labels`` holds, and its score comes along. The objects
    of ``labels`` and their ids are unchanged; added objects follow them, their
    ids after both the largest id and the number of ``scores``, so that label
    ``k`` keeps score ``k - 1``.
    """
    from skimage.measure import regionprops_table
    from emcopilot.analysis.matching import box_iou

    labels = np.asarray(labels, np.int32)
    extra = np.asarray(extra, np.int32)
    if labels.shape != extra.shape:
        raise ValueError(f"add_unmatched: label images of shapes {labels.shape} and {extra.shape}")
    scores = np.asarray(scores, np.float32)
    extra_scores = np.asarray(extra_scores, np.float32)
    if extra.max() == 0:
        return labels, scores, 0
    theirs = regionprops_table(extra, properties=("label", "bbox"))
    ours = regionprops_table(labels, properties=("label", "bbox")) if labels.max() else None
    candidates = np.asarray(theirs["label"])
    boxes = np.stack([theirs[f"bbox-{k}"] for k in range(4)], axis=1).astype(np.float64)
    keep = np.ones(len(candidates), bool)
    if ours is not None:
        base = np.stack([ours[f"bbox-{k}"] for k in range(4)], axis=1).astype(np.float64)
        for first in range(0, len(boxes), 256):  # a block of candidates at a time: memory stays bounded
            keep[first:first + 256] = (box_iou(boxes[first:first + 256], base) < max_box_iou).all(axis=1)
    # an object added takes the pixels no earlier object holds; one with none left is not added
    added = np.intersect1d(candidates[keep], extra[(labels == 0) & (extra > 0)])
    if not len(added):
        return labels, scores, 0
    first_id = max(int(labels.max()), len(scores)) + 1
    new_id = np.zeros(int(extra.max()) + 1, np.int32)
    new_id[added] = first_id + np.arange(len(added), dtype=np.int32)
    merged = np.where(labels == 0, new_id[extra], labels).astype(np.int32)
    return merged, np.concatenate([scores, extra_scores[added - 1]]).astype(np.float32), len(added)


def outlines_from_atoms(image: np.ndarray, labels: np.ndarray, *, sigma_px: float, min_distance_px: float,
                        radius_px: float, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Each detected cluster redrawn round the atoms inside it: ``(labels, atoms per cluster)``.

    The image is smoothed at the atom's width; inside each region of ``labels``
    its local maxima at least ``min_distance_px`` apart and rising above the
    support (the median outside every region) by ``fraction`` of the region's
    brightest one are the atoms; the cluster becomes their disks of
    ``radius_px`` with the gaps closed (:func:`emcopilot.specimen.outlines.cluster_outline`),
    as clusters are drawn in the priors and the synthetic labels. The network's
    foreground says where a cluster is; how far it reaches into the probe's blur
    depends on dose, support and blur, the atoms' positions do not. A region
    without a peak keeps its outline (count 0).
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    from emcopilot.specimen.outlines import cluster_outlines

    labels = np.asarray(labels, np.int32)
    count = int(labels.max())
    atoms = np.zeros(count, np.int32)
    if not count:
        return labels, atoms
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float64), max(sigma_px, 0.5))
    support = float(np.median(smooth[labels == 0])) if (labels == 0).any() else float(smooth.min())
    points, ids, kept = [], [], np.zeros_like(labels)
    for index, window in enumerate(ndimage.find_objects(labels), 1):
        if window is None:
            continue
        region = labels[window] == index
        values = np.where(region, smooth[window], support)
        top = values[region].max()
        peaks = peak_local_max(values, min_distance=max(1, int(round(min_distance_px))), exclude_border=False,
                               threshold_abs=support + fraction * (top - support), labels=region.astype(np.int32))
        if not len(peaks):
            kept[window][region] = index
            continue
        atoms[index - 1] = len(peaks)
        points.append(peaks + np.array([window[0].start, window[1].start]))
        ids.append(np.full(len(peaks), index))
    redrawn = disk_labels(np.concatenate(points), np.concatenate(ids), labels.shape, radius_px) if points else kept
    redrawn = np.where((redrawn == 0) & (kept > 0), kept, redrawn)
    return cluster_outlines(redrawn, radius_px), atoms


def atoms_from_heatmap(heatmap: np.ndarray, *, threshold: float, min_distance_px: float, disk_radius_px: float,
                       cluster_distance_px: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of a heatmap: ``(points (N, 2) row/col, labels, scores)``.

    Points are refined to the intensity-weighted centre of their 3x3
    neighbourhood. Labels are disks of ``disk_radius_px``; with
    ``cluster_distance_px`` atoms closer than it share one label (a cluster).
    """
    from skimage.feature import peak_local_max

    peaks = peak_local_max(heatmap, min_distance=max(1, int(round(min_distance_px))), threshold_abs=threshold,
                           exclude_border=False)
    scores = heatmap[peaks[:, 0], peaks[:, 1]].astype(np.float32) if len(peaks) else np.zeros(0, np.float32)
    points = _refine(heatmap, peaks)
    groups = _group(points, cluster_distance_px) if cluster_distance_px else np.arange(1, len(points) + 1)
    labels = disk_labels(points, groups, heatmap.shape, disk_radius_px)
    return points, labels, scores


def _refine(heatmap: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    if not len(peaks):
        return np.zeros((0, 2))
    padded = np.pad(heatmap, 1, mode="edge")
    offsets = np.array([-1, 0, 1])
    refined = []
    for row, col in peaks:
        window = np.clip(padded[row:row + 3, col:col + 3], 0, None)
        total = window.sum()
        if total <= 0:
            refined.append((row, col))
            continue
        refined.append((row + (window.sum(1) * offsets).sum() / total, col + (window.sum(0) * offsets).sum() / total))
    return np.array(refined, float)


def _group(points: np.ndarray, distance_px: float) -> np.ndarray:
    """Cluster ids 1..K: connected components of atoms closer than ``distance_px``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not len(points):
        return np.zeros(0, int)
    pairs = cKDTree(points).query_pairs(distance_px, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points),) * 2)
    return connected_components(graph, directed=False)[1] + 1


def disk_labels(points: np.ndarray, ids: np.ndarray, shape: tuple[int, int], radius_px: float) -> np.ndarray:
    """Label image with a disk of ``radius_px`` (at least the centre pixel) per point."""
    labels = np.zeros(shape, np.int32)
    reach = int(np.ceil(radius_px))
    offsets = np.arange(-reach, reach + 1)
    for (row, col), index in zip(points, ids):
        r0, c0 = int(round(row)), int(round(col))
        rows, cols = np.meshgrid(r0 + offsets, c0 + offsets, indexing="ij")
        inside = ((rows - row) ** 2 + (cols - col) ** 2 <= radius_px ** 2) | ((rows == r0) & (cols == c0))
        inside &= (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        labels[rows[inside], cols[inside]] = index
    return labels
