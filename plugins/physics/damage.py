"""Radiation damage during a frame: single atoms hop or leave, particle edges erode.

Damage changes what the frame shows, so it edits both the clean image and
the :class:`~emcopilot.specimen.layout.Layout` (in place) to keep the labels exact.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from emcopilot.specimen.layout import Layout


def hop_probability(dose_e_per_A2: float, critical_dose_e_per_A2: float) -> float:
    """Share of atoms displaced during the frame: 1 - exp(-D / D_c).

    First-order (single-hit) kinetics of beam-induced displacement, as used
    for single-atom catalysts under STEM (e.g. Ishikawa et al., Nat. Commun. 9
    (2018) 3878); D_c is the dose at which 63 % of the atoms have moved.
    """
    return 1.0 - math.exp(-dose_e_per_A2 / critical_dose_e_per_A2)


def _window(shape: tuple[int, int], row: float, col: float, radius_px: int):
    """Slices of the square window of half-width ``radius_px`` centred on the pixel nearest (row, col)."""
    r0, c0 = int(round(row)) - radius_px, int(round(col)) - radius_px
    r1, c1 = r0 + 2 * radius_px + 1, c0 + 2 * radius_px + 1
    if r0 < 0 or c0 < 0 or r1 > shape[0] or c1 > shape[1]:
        return None
    return slice(r0, r1), slice(c0, c1)


def _atom_patch(clean: np.ndarray, row: float, col: float, radius_px: int):
    """The atom's excess over the local background (median of the window's border), in a disk."""
    slices = _window(clean.shape, row, col, radius_px)
    if slices is None:
        return None
    window = clean[slices]
    border = np.concatenate([window[0], window[-1], window[1:-1, 0], window[1:-1, -1]])
    yy, xx = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    disk = (yy ** 2 + xx ** 2) <= radius_px ** 2
    patch = np.where(disk, np.maximum(window - np.median(border), 0), 0).astype(np.float32)
    return slices, patch


def displace_atoms(clean: np.ndarray, layout: Layout, probability: float, hop_px: float,
                   loss_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move a share ``probability`` of single atoms by ``hop_px``; a share ``loss_fraction``
    of those leaves the field of view. The atom's own contrast (its excess over the
    local background in the clean image) is cut out and pasted at the new position."""
    if layout.atoms is None or len(layout.atoms) == 0 or probability <= 0:
        return clean
    hopping = np.flatnonzero(rng.random(len(layout.atoms)) < probability)
    if hopping.size == 0:
        return clean
    out = clean.copy()
    radius_px = max(2, int(math.ceil(2 * layout.atom_radius_nm / layout.pixel_size_nm)))
    keep = np.ones(len(layout.atoms), bool)
    atoms = layout.atoms.copy()
    for index in hopping:
        found = _atom_patch(out, *atoms[index], radius_px)
        if found is None:
            continue
        window, patch = found
        out[window] -= patch
        if rng.random() < loss_fraction:
            keep[index] = False
            continue
        angle = rng.uniform(0, 2 * math.pi)
        target = atoms[index] + hop_px * np.array([math.sin(angle), math.cos(angle)])
        placed = _window(out.shape, *target, radius_px)
        if placed is None:
            keep[index] = False  # hopped out of the frame
            continue
        # the patch's content sits at atom - round(atom) from its centre; move it to target - round(target)
        offset = (target - np.round(target)) - (atoms[index] - np.round(atoms[index]))
        out[placed] += ndimage.shift(patch, offset, order=1, mode="constant")
        atoms[index] = target
    layout.atoms = atoms[keep]
    if layout.atom_z is not None:
        layout.atom_z = layout.atom_z[keep]
    layout.redraw_atoms()
    return out


def erode_edges(clean: np.ndarray, layout: Layout, erosion_px: float) -> np.ndarray:
    """Remove a rim of ``erosion_px`` from every particle (sputtering at edges).

    The rim takes the local support intensity, estimated by normalised
    convolution of the clean image outside the objects.
    """
    if erosion_px < 0.5 or layout.count == 0:
        return clean
    objects = layout.labels > 0
    depth = ndimage.distance_transform_edt(objects)
    rim = objects & (depth <= erosion_px)
    outside = (~objects).astype(np.float32)
    sigma = 3 * erosion_px + 2
    weight = ndimage.gaussian_filter(outside, sigma)
    background = ndimage.gaussian_filter(clean * outside, sigma) / np.maximum(weight, 1e-6)
    fallback = float(np.median(clean[~objects])) if outside.any() else 0.0
    background = np.where(weight > 1e-3, background, fallback)
    out = np.where(rim, background, clean).astype(np.float32)
    from skimage.segmentation import relabel_sequential
    labels = np.where(rim, 0, layout.labels)
    layout.labels = relabel_sequential(labels)[0].astype(np.int32)
    layout.thickness_nm = np.where(rim, 0, layout.thickness_nm).astype(np.float32)
    layout.z_map = np.where(rim, layout.support_z, layout.z_map).astype(np.float32)
    return out
