"""The ``atoms`` prior extractor: single atoms and sub-nm clusters.

Single heavy atoms on a light support sit only a few standard deviations above
a strongly uneven background, so detection is relative to the *local* noise:

1. polarity: dark objects are inverted so atoms are bright;
2. band-pass: difference of Gaussians, the inner sigma matched to the atom
   (sigma = FWHM / 2.355; the FWHM defaults to the geometric mean of the
   recipe's diameter range) and the
   outer one ``background_nm``; this removes the support's slow contrast;
3. local noise: the median absolute deviation of the band-passed image in
   tiles ``noise_window_nm`` wide, interpolated smoothly over the image;
4. peaks of (band-passed / local noise) above ``threshold_snr`` and at least
   ``min_separation_nm`` apart (:func:`skimage.feature.peak_local_max`);
5. output: the points, plus a small disk per atom (label ``k + 1`` for point
   ``k``); with ``group_clusters`` atoms closer than ``cluster_distance_nm``
   are merged into one labelled cluster instead: the union of their disks with the gaps
   between neighbours closed (:func:`emcopilot.specimen.outlines.cluster_outline`).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from emcopilot.core.interfaces import Instances, Micrograph
from emcopilot.specimen.outlines import cluster_outlines
from emcopilot.specimen.morphology import normalise_image

from .scale import image_scale, is_bright

log = logging.getLogger("emcopilot.priors.atoms")

#: Gaussian FWHM = 2·sqrt(2·ln 2)·sigma
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def local_noise(image: np.ndarray, window_px: int) -> np.ndarray:
    """Noise map: 1.4826 x MAD in tiles of ``window_px``, bilinearly interpolated."""
    from scipy import ndimage

    window_px = max(8, int(window_px))
    rows = max(1, image.shape[0] // window_px)
    cols = max(1, image.shape[1] // window_px)
    row_edges = np.linspace(0, image.shape[0], rows + 1).astype(int)
    col_edges = np.linspace(0, image.shape[1], cols + 1).astype(int)
    tiles = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            tile = image[row_edges[i]:row_edges[i + 1], col_edges[j]:col_edges[j + 1]]
            tiles[i, j] = 1.4826 * np.median(np.abs(tile - np.median(tile)))
    floor = max(float(np.median(tiles)) * 1e-3, 1e-12)
    tiles = np.maximum(tiles, floor)
    if tiles.size == 1:
        return np.full(image.shape, tiles[0, 0], np.float32)
    zoom = (image.shape[0] / rows, image.shape[1] / cols)
    noise = ndimage.zoom(tiles, zoom, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(noise[:image.shape[0], :image.shape[1]]).astype(np.float32)


def disk_labels(points: np.ndarray, radius_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Label ``k + 1`` for a disk of ``radius_px`` around point ``k`` (later points overwrite)."""
    labels = np.zeros(shape, np.int32)
    reach = int(math.ceil(radius_px))
    offsets = np.array([(dr, dc) for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)
                        if dr * dr + dc * dc <= radius_px * radius_px])
    if not len(points) or not len(offsets):
        return labels
    centres = np.round(points).astype(int)
    rows = (centres[:, None, 0] + offsets[None, :, 0]).ravel()
    cols = (centres[:, None, 1] + offsets[None, :, 1]).ravel()
    ids = np.repeat(np.arange(1, len(points) + 1, dtype=np.int32), len(offsets))
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    labels[rows[inside], cols[inside]] = ids[inside]
    return labels


def group_clusters(points: np.ndarray, distance_px: float) -> np.ndarray:
    """Cluster index (0..C-1) of each point: connected components of the 'closer than' graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not len(points):
        return np.zeros(0, int)
    pairs = np.array(sorted(cKDTree(points).query_pairs(distance_px)), int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points), len(points)))
    return connected_components(graph, directed=False)[1]


class AtomExtractor:
    """Difference-of-Gaussians peaks above the local noise; points plus small disks."""

    def __init__(self, params: dict[str, Any], sample: Any = None):
        self.params = dict(params)
        self.sample = sample
        self.bright = is_bright(params.get("contrast"), sample)
        grouping = params.get("group_clusters")
        self.grouping = (getattr(sample, "kind", "atoms") == "clusters") if grouping is None else grouping

    def extract(self, micrograph: Micrograph) -> Instances:
        from scipy import ndimage
        from skimage.feature import peak_local_max

        micrograph.require_finite()
        params = self.params
        scale = image_scale(micrograph, params, self.sample, self.bright)
        pixel_size_nm = scale.pixel_size_nm
        image = normalise_image(micrograph.data)
        if not self.bright:
            image = 1.0 - image
        atom_px = params["atom_fwhm_nm"] / pixel_size_nm if params["atom_fwhm_nm"] else scale.typical_diameter_px
        sigma_px = max(0.5, atom_px / FWHM_PER_SIGMA)
        background_px = max(2 * sigma_px, params["background_nm"] / pixel_size_nm)
        band = ndimage.gaussian_filter(image, sigma_px) - ndimage.gaussian_filter(image, background_px)
        noise = local_noise(band, params["noise_window_nm"] / pixel_size_nm)
        snr = band / noise
        min_distance = max(1, int(round(params["min_separation_nm"] / pixel_size_nm)))
        peaks = peak_local_max(snr, min_distance=min_distance, threshold_abs=params["threshold_snr"],
                               exclude_border=False).astype(float)
        scores = snr[tuple(peaks.astype(int).T)] if len(peaks) else np.zeros(0)
        disk_px = (params["disk_diameter_nm"] / pixel_size_nm if params["disk_diameter_nm"] else atom_px) / 2
        metadata = {**scale.metadata(), "extractor": "atoms", "atoms": int(len(peaks)),
                    "atom_fwhm_px": atom_px, "min_separation_px": min_distance}
        if not len(peaks):
            log.warning("%s: no atom found above %.2f x local noise", micrograph.name, params["threshold_snr"])
        if self.grouping:
            cluster_px = (params["cluster_distance_nm"] or 2.0 * params["min_separation_nm"]) / pixel_size_nm
            clusters = group_clusters(peaks, cluster_px)
            labels = np.zeros(micrograph.shape, np.int32)
            atom_disks = disk_labels(peaks, disk_px, micrograph.shape)
            cluster_of = np.concatenate([[0], clusters + 1]).astype(np.int32)
            labels = cluster_outlines(cluster_of[atom_disks], disk_px)
            metadata.update(clusters=int(clusters.max() + 1) if len(clusters) else 0,
                            atoms_per_cluster=np.bincount(clusters).tolist() if len(clusters) else [])
            return Instances(labels=labels, metadata=metadata)
        return Instances(labels=disk_labels(peaks, disk_px, micrograph.shape), points=peaks, scores=scores,
                         metadata=metadata)
