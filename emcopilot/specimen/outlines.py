"""Object outlines in physical units and their pixels: radial functions r(θ), footprints, atom disks.

An object's outline is its radial function r(θ) about its centre, sampled at
``OUTLINE_SAMPLES`` angles and scaled to unit equivalent diameter: an ellipse,
optionally faceted and perturbed by a few harmonics, or one of the prior's
measured contours. :func:`object_footprint` rasterises it with the projected
thickness of the body; :func:`atom_disks` draws a cluster as its atoms' disks;
:func:`cluster_outline` is the outline drawn round a cluster.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .layout import LayoutSpec

#: Angular samples of an outline's radial function r(θ).
OUTLINE_SAMPLES = 128


# --------------------------------------------------------------------------- outlines

def _ellipse_radius(angles: np.ndarray, aspect: float, orientation: float) -> np.ndarray:
    """Radius r(θ) of an ellipse with unit equivalent diameter (area π/4)."""
    major, minor = math.sqrt(aspect) / 2, 1 / (2 * math.sqrt(aspect))
    phase = angles - orientation
    return major * minor / np.sqrt((minor * np.cos(phase)) ** 2 + (major * np.sin(phase)) ** 2)


def _polygon_radius(angles: np.ndarray, sides: int, orientation: float) -> np.ndarray:
    """Radius r(θ) of a regular polygon (a faceted particle), inradius 1."""
    sector = 2 * math.pi / sides
    phase = np.mod(angles - orientation, sector) - sector / 2
    return 1 / np.cos(phase)


def _outline_radius(outline: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Radial function of a contour about its centroid (made star-shaped)."""
    vertices = np.asarray(outline, dtype=np.float64)
    # resample densely along the perimeter: straight edges between far-apart vertices
    closed = np.vstack([vertices, vertices[:1]])
    steps = np.linspace(0, 1, 16, endpoint=False)
    points = (closed[:-1, None, :] * (1 - steps)[None, :, None] + closed[1:, None, :] * steps[None, :, None])
    points = points.reshape(-1, 2)
    points = points - vertices.mean(axis=0)
    theta = np.arctan2(points[:, 0], points[:, 1])
    radius = np.hypot(points[:, 0], points[:, 1])
    order = np.argsort(theta)
    return np.interp(angles, theta[order], radius[order], period=2 * math.pi)


def _unit_area(radius: np.ndarray) -> np.ndarray:
    """Scale r(θ) so that the outline has the area of a unit-diameter disk."""
    area = 0.5 * np.mean(radius ** 2) * 2 * math.pi
    return radius * math.sqrt((math.pi / 4) / area)


def draw_outline(spec: LayoutSpec, rng: np.random.Generator) -> np.ndarray:
    """r(θ) at OUTLINE_SAMPLES angles for a unit-equivalent-diameter object."""
    angles = np.linspace(0, 2 * math.pi, OUTLINE_SAMPLES, endpoint=False)
    orientation = rng.uniform(0, 2 * math.pi)
    if spec.outlines:
        outline = np.asarray(spec.outlines[rng.integers(len(spec.outlines))], dtype=np.float64)
        if rng.random() < 0.5:
            outline = outline * np.array([1.0, -1.0])
        return _unit_area(_outline_radius(outline, angles - orientation))
    aspect = max(1.0, rng.normal(spec.aspect_ratio_mean, spec.aspect_ratio_sd))
    radius = _ellipse_radius(angles, aspect, orientation)
    if spec.irregularity > 0:
        if rng.random() < spec.irregularity:
            radius = radius * _polygon_radius(angles, int(rng.integers(5, 9)), rng.uniform(0, 2 * math.pi))
        harmonics = np.arange(2, 8)
        amplitudes = rng.normal(0, spec.irregularity / harmonics)
        phases = rng.uniform(0, 2 * math.pi, harmonics.size)
        perturbation = (amplitudes[:, None] * np.cos(harmonics[:, None] * angles[None, :] - phases[:, None])).sum(0)
        radius = radius * np.clip(1 + perturbation, 0.5, 1.5)  # keep outlines star-shaped
    return _unit_area(radius)


def radius_at(radius: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Linear interpolation of the sampled r(θ) at arbitrary angles."""
    position = (theta + np.float32(2 * math.pi)) * np.float32(OUTLINE_SAMPLES / (2 * math.pi))  # θ >= -π
    whole = np.floor(position)
    low = whole.astype(np.intp) % OUTLINE_SAMPLES
    frac = position - whole
    return radius[low] * (1 - frac) + radius[(low + 1) % OUTLINE_SAMPLES] * frac


# --------------------------------------------------------------------------- rasterising

@dataclass
class Footprint:
    rows: slice
    cols: slice
    mask: np.ndarray       # inside the object
    margin: np.ndarray     # inside the object grown by the gap (must stay empty)
    thickness_nm: np.ndarray


def object_footprint(center_px: tuple[float, float], radius_nm: np.ndarray, height_nm: float,
               pixel_size_nm: float, shape: tuple[int, int], gap_px: float) -> Footprint | None:
    """Pixels of a star-shaped object; thickness of an ellipsoid-like body.

    Projected thickness of a body whose outline is r(θ): t = h·sqrt(1 - ρ²)
    with ρ = r / r(θ), the chord of a sphere (h = height) stretched to the outline.
    """
    reach_px = float(radius_nm.max()) / pixel_size_nm + gap_px + 1
    row0 = max(0, int(math.floor(center_px[0] - reach_px)))
    row1 = min(shape[0], int(math.ceil(center_px[0] + reach_px)) + 1)
    col0 = max(0, int(math.floor(center_px[1] - reach_px)))
    col1 = min(shape[1], int(math.ceil(center_px[1] + reach_px)) + 1)
    if row0 >= row1 or col0 >= col1:
        return None
    dy = (np.arange(row0, row1, dtype=np.float32) - np.float32(center_px[0]))[:, None]
    dx = (np.arange(col0, col1, dtype=np.float32) - np.float32(center_px[1]))[None, :]
    r_px = np.hypot(dy, dx)
    boundary_px = radius_at(radius_nm.astype(np.float32), np.arctan2(dy, dx)) / np.float32(pixel_size_nm)
    mask = r_px <= boundary_px
    if not mask.any():
        return None
    rho2 = np.where(mask, (r_px / np.maximum(boundary_px, 1e-9)) ** 2, 1.0)
    thickness = (height_nm * np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))).astype(np.float32)
    return Footprint(slice(row0, row1), slice(col0, col1), mask, r_px <= boundary_px + gap_px, thickness)


def cluster_outline(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """The outline one draws round a cluster: its atoms' disks with the gaps between neighbours
    closed (a binary closing by a disk of ``radius_px``) and holes filled.

    A union of atom disks is lacy: its distance map peaks at every atom, and a watershed on it
    cuts the cluster into atoms. The closed outline is one region with one centre, so a cluster is
    one object in the priors, in the synthetic labels and in what the segmenter learns.
    """
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    reach = max(1, int(round(radius_px)))
    offsets = np.arange(-reach, reach + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= reach ** 2
    padded = np.pad(mask, reach + 1)
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(padded, structure=disk))
    return closed[reach + 1:-(reach + 1), reach + 1:-(reach + 1)] | mask


def cluster_outlines(labels: np.ndarray, radius_px: float) -> np.ndarray:
    """:func:`cluster_outline` of every label of ``labels``, each on its own (neighbours never merge;
    where two closed outlines meet, the pixel stays with the label that had it, else the first)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    out = labels.copy()
    reach = max(1, int(round(radius_px))) + 1
    for index, window in enumerate(ndimage.find_objects(labels), 1):
        if window is None:
            continue
        box = tuple(slice(max(w.start - reach, 0), min(w.stop + reach, n)) for w, n in zip(window, labels.shape))
        closed = cluster_outline(labels[box] == index, radius_px)
        target = out[box]
        target[closed & (target == 0)] = index
    return out


def atom_disks(points_px: np.ndarray, radius_nm: float, pixel_size_nm: float,
           shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Union of atom disks (label mask) and summed sphere chords (thickness), on a bounding box."""
    radius_px = radius_nm / pixel_size_nm
    reach = radius_px + 1
    row0 = max(0, int(math.floor(points_px[:, 0].min() - reach)))
    row1 = min(shape[0], int(math.ceil(points_px[:, 0].max() + reach)) + 1)
    col0 = max(0, int(math.floor(points_px[:, 1].min() - reach)))
    col1 = min(shape[1], int(math.ceil(points_px[:, 1].max() + reach)) + 1)
    if row0 >= row1 or col0 >= col1:
        return None
    rows = np.arange(row0, row1, dtype=np.float64)
    cols = np.arange(col0, col1, dtype=np.float64)
    mask = np.zeros((row1 - row0, col1 - col0), bool)
    thickness = np.zeros(mask.shape, np.float32)
    for row, col in points_px:
        r2 = (rows[:, None] - row) ** 2 + (cols[None, :] - col) ** 2
        inside = r2 <= max(radius_px, 0.5) ** 2
        mask |= inside
        # chord of a sphere of radius R at distance r from its centre: 2·sqrt(R² - r²)
        thickness += (2 * np.sqrt(np.clip(radius_px ** 2 - r2, 0, None)) * pixel_size_nm).astype(np.float32)
    return (slice(row0, row1), slice(col0, col1)), cluster_outline(mask, radius_px), thickness
