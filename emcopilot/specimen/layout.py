"""Layouts: what a synthetic micrograph shows, drawn in physical units.

A :class:`LayoutSpec` says what to draw (object kind, lognormal size in nm,
shape, number density per nm², clustering, touching pairs, material and
support atomic numbers). :func:`sample_layout` draws one :class:`Layout` on a
pixel grid: the exact instance label map, the projected thickness of every
object, the atomic number per pixel and, for atomistic layouts, the atom
coordinates. Generators render a clean image from a layout; physics adapters
degrade it; segmenters learn from the layout's exact labels.

Numpy only (scipy for the rare optional support field): importing this module
is cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InputError
from ..core.interfaces import PIXEL_SIZE_RANGE_NM, Instances
from .outlines import (OUTLINE_SAMPLES, Footprint, atom_disks, cluster_outline,  # noqa: F401  (importable from here)
                       cluster_outlines, draw_outline, object_footprint, radius_at)

if TYPE_CHECKING:
    from ..core.recipe import Sample

KINDS = ("particles", "clusters", "atoms")

#: Refuse layouts that would hold more objects than this (a typo in a density).
MAX_OBJECTS = 200_000

#: Attempts to place one object before giving up on it (the frame is full).
PLACEMENT_ATTEMPTS = 30


@dataclass
class LayoutSpec:
    """What to draw, in physical units.

    Sizes are equivalent diameters (the diameter of the disk of equal
    projected area), lognormal with median ``diameter_nm_median`` and
    ``diameter_sigma_log`` the standard deviation of ``ln d``.
    ``number_density_per_nm2`` counts objects (particles, clusters or single
    atoms) per nm² of the frame.
    """

    kind: str
    diameter_nm_median: float
    diameter_sigma_log: float
    number_density_per_nm2: float
    aspect_ratio_mean: float = 1.15
    aspect_ratio_sd: float = 0.1
    irregularity: float = 0.1
    touching_fraction: float = 0.1
    clustering: float = 0.0
    outlines: list[np.ndarray] | None = None
    material_z: int = 78
    support_z: int = 6
    atom_min_separation_nm: float = 0.2
    cluster_atoms: tuple[int, int] = (3, 50)
    #: height / equivalent diameter of a particle (1 = sphere-like, < 1 flattened)
    thickness_ratio: float = 1.0
    #: nearest-neighbour distance in clusters (fcc Pt: 0.277 nm)
    atom_bond_nm: float = 0.277
    #: radius of an atom's label disk and projected sphere (Pt metallic radius 0.139 nm)
    atom_radius_nm: float = 0.139
    #: fraction of the frame covered by support (1 = everywhere; < 1 leaves vacuum holes)
    support_coverage: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first field that cannot be drawn."""
        if self.kind not in KINDS:
            raise InputError(f"LayoutSpec.kind must be one of {list(KINDS)}, got {self.kind!r}")
        positive = ("diameter_nm_median", "atom_bond_nm", "atom_radius_nm", "thickness_ratio",
                    "aspect_ratio_mean")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"LayoutSpec.{name} must be a positive finite number, got {value!r}")
        non_negative = ("diameter_sigma_log", "number_density_per_nm2", "aspect_ratio_sd",
                        "irregularity", "atom_min_separation_nm")
        for name in non_negative:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"LayoutSpec.{name} must be a finite number >= 0, got {value!r}")
        for name in ("touching_fraction", "clustering"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise InputError(f"LayoutSpec.{name} must be in [0, 1], got {value!r}")
        if not (isinstance(self.support_coverage, (int, float)) and 0 < self.support_coverage <= 1):
            raise InputError(f"LayoutSpec.support_coverage must be in (0, 1], got {self.support_coverage!r}")
        if self.aspect_ratio_mean < 1:
            raise InputError(f"LayoutSpec.aspect_ratio_mean is major/minor and must be >= 1, "
                             f"got {self.aspect_ratio_mean!r}")
        for name in ("material_z", "support_z"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and 1 <= value <= 103):
                raise InputError(f"LayoutSpec.{name} must be an atomic number 1..103, got {value!r}")
        low, high = self.cluster_atoms
        if not (1 <= low <= high):
            raise InputError(f"LayoutSpec.cluster_atoms must be (min, max) with 1 <= min <= max, "
                             f"got {self.cluster_atoms!r}")
        if self.outlines is not None:
            for index, outline in enumerate(self.outlines):
                outline = np.asarray(outline)
                if outline.ndim != 2 or outline.shape[1] != 2 or len(outline) < 3 \
                        or not np.isfinite(outline).all():
                    raise InputError(f"LayoutSpec.outlines[{index}] must be a finite (K, 2) array "
                                     f"with K >= 3, got shape {outline.shape}")

    @classmethod
    def from_sample(cls, sample: "Sample", **overrides: Any) -> "LayoutSpec":
        """A spec from a recipe's ``sample:`` block.

        The block's ``diameter_nm: [min, max]`` is read as the central 95 % of a
        lognormal: median = sqrt(min·max), sigma = ln(max/min) / (2·1.96).
        The default number density covers 10 % of the frame with particles
        (clusters: 3 %); single atoms default to 0.3 atoms/nm².
        """
        low, high = (float(v) for v in sample.diameter_nm)
        median = math.sqrt(low * high)
        sigma = math.log(high / low) / (2 * 1.96) if high > low else 0.0
        if sample.kind == "atoms":
            density = 0.3
        else:
            coverage = 0.10 if sample.kind == "particles" else 0.03
            mean_area_nm2 = math.pi / 4 * median ** 2 * math.exp(2 * sigma ** 2)
            density = coverage / mean_area_nm2
        values: dict[str, Any] = dict(kind=sample.kind, diameter_nm_median=median, diameter_sigma_log=sigma,
                                      number_density_per_nm2=density, material_z=int(sample.material_z),
                                      support_z=int(sample.support_z))
        values.update(overrides)
        return cls(**values)


@dataclass
class Layout:
    """What was drawn, on a pixel grid (rows, columns).

    ``labels``: int32, 0 = background, 1..N objects. ``thickness_nm``:
    projected thickness of the objects (support excluded). ``z_map``: atomic
    number per pixel (``support_z`` outside objects, 0 in vacuum holes).
    For atomistic layouts ``atoms`` holds (row, col) pixel coordinates,
    ``atom_z`` their atomic numbers and ``atom_label`` the object of each
    atom. ``support`` is a boolean support mask when the support has holes.
    ``diameters_nm`` are the drawn equivalent diameters of objects 1..N.
    """

    labels: np.ndarray
    thickness_nm: np.ndarray
    z_map: np.ndarray
    pixel_size_nm: float
    kind: str
    atoms: np.ndarray | None = None
    atom_z: np.ndarray | None = None
    atom_label: np.ndarray | None = None
    support: np.ndarray | None = None
    diameters_nm: np.ndarray | None = None
    support_z: int = 6
    atom_radius_nm: float = 0.139
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def count(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0

    def redraw_atoms(self) -> None:
        """Rebuild labels, thickness and Z map of a single-atom layout from ``atoms``
        (after atoms were moved or removed); atom k gets label k + 1."""
        if self.kind != "atoms":
            raise InputError(f"redraw_atoms() needs a single-atom layout, this one is {self.kind!r}")
        atoms = np.zeros((0, 2)) if self.atoms is None else np.asarray(self.atoms, np.float64).reshape(-1, 2)
        self.labels = np.zeros(self.labels.shape, np.int32)
        self.thickness_nm = np.zeros(self.labels.shape, np.float32)
        _draw_atoms(self, atoms)
        z_map = np.full(self.labels.shape, float(self.support_z), np.float32)
        if self.support is not None:
            z_map[~self.support] = 0.0
        if self.atom_z is not None and len(self.atom_z):
            inside = self.labels > 0
            z_map[inside] = np.asarray(self.atom_z, np.float32)[self.labels[inside] - 1]
        self.z_map = z_map

    def instances(self) -> Instances:
        """The exact instances: labels, plus one point per atom for single-atom layouts."""
        points = self.atoms if self.kind == "atoms" else None
        metadata = {"kind": self.kind, "pixel_size_nm": self.pixel_size_nm}
        if self.kind == "clusters" and self.atoms is not None:
            metadata["atoms"] = self.atoms
        return Instances(labels=self.labels, points=points, metadata=metadata)


# --------------------------------------------------------------------------- positions

def _propose_center(spec: LayoutSpec, placed: list[tuple[float, float]], shape: tuple[int, int],
                    spread_px: float, support: np.ndarray | None, rng: np.random.Generator) -> tuple[float, float]:
    """Uniform, or (with probability ``clustering``) near an object already placed."""
    for _ in range(PLACEMENT_ATTEMPTS):
        if placed and rng.random() < spec.clustering:
            anchor = placed[rng.integers(len(placed))]
            center = (anchor[0] + rng.normal(0, spread_px), anchor[1] + rng.normal(0, spread_px))
        else:
            center = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        row, col = int(center[0]), int(center[1])
        if not (0 <= row < shape[0] and 0 <= col < shape[1]):
            continue
        if support is None or support[row, col]:
            return center
    return (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))


def _support_mask(spec: LayoutSpec, shape: tuple[int, int], pixel_size_nm: float,
                  rng: np.random.Generator) -> np.ndarray | None:
    """A support film with holes: a smooth random field thresholded at the coverage quantile."""
    if spec.support_coverage >= 1:
        return None
    from scipy.ndimage import gaussian_filter
    correlation_px = max(2.0, 20 * spec.diameter_nm_median / pixel_size_nm)
    field_ = gaussian_filter(rng.standard_normal(shape), correlation_px, mode="wrap")
    return field_ >= np.quantile(field_, 1 - spec.support_coverage)


def _object_count(spec: LayoutSpec, shape: tuple[int, int], pixel_size_nm: float,
                  rng: np.random.Generator) -> int:
    area_nm2 = shape[0] * shape[1] * pixel_size_nm ** 2
    expected = spec.number_density_per_nm2 * area_nm2
    if expected > MAX_OBJECTS:
        raise InputError(f"LayoutSpec.number_density_per_nm2={spec.number_density_per_nm2} on "
                         f"{area_nm2:.4g} nm² asks for {expected:.3g} objects (limit {MAX_OBJECTS}); "
                         "check the density's unit (per nm²)")
    return int(rng.poisson(expected))


# --------------------------------------------------------------------------- kinds

def _cluster_atoms_nm(count: int, bond_nm: float, rng: np.random.Generator) -> np.ndarray:
    """A compact cluster: the ``count`` fcc sites nearest a random point, randomly rotated,
    projected along the beam; (row, col) in nm about the cluster's centre."""
    cell_nm = bond_nm * math.sqrt(2)  # fcc lattice constant from the nearest-neighbour distance
    span = np.arange(-4, 5)
    grid = np.stack(np.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    sites = (grid[:, None, :] + basis[None, :, :]).reshape(-1, 3) * cell_nm
    origin = rng.uniform(-0.5, 0.5, 3) * cell_nm
    nearest = np.argsort(np.linalg.norm(sites - origin, axis=1))[:count]
    chosen = sites[nearest] - sites[nearest].mean(axis=0)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    projected = (chosen @ rotation.T)[:, :2]
    return projected


def _atoms_in_cluster(spec: LayoutSpec, diameter_nm: float) -> int:
    """Atoms of a compact cluster of equivalent diameter d: 0.74·(d/bond)³ (fcc packing fraction)."""
    count = int(round(0.74 * (diameter_nm / spec.atom_bond_nm) ** 3))
    return int(np.clip(count, spec.cluster_atoms[0], spec.cluster_atoms[1]))


def _sample_single_atoms(spec: LayoutSpec, layout: Layout, count: int, support: np.ndarray | None,
                         rng: np.random.Generator) -> None:
    ps = layout.pixel_size_nm
    min_sep_px = spec.atom_min_separation_nm / ps
    spread_px = max(4 * min_sep_px, 1.0)
    accepted: list[tuple[float, float]] = []
    points = np.empty((0, 2))
    for _ in range(count):
        for _ in range(PLACEMENT_ATTEMPTS):
            center = _propose_center(spec, accepted, layout.shape, spread_px, support, rng)
            if not accepted or np.min(np.hypot(points[:, 0] - center[0], points[:, 1] - center[1])) >= min_sep_px:
                accepted.append(center)
                points = np.asarray(accepted)
                break
    atoms = np.asarray(accepted, dtype=np.float64).reshape(-1, 2)
    _draw_atoms(layout, atoms)
    layout.atom_z = np.full(len(atoms), spec.material_z, dtype=np.int32)


def _draw_atoms(layout: Layout, atoms: np.ndarray) -> None:
    """Label disks (atom k -> label k + 1; overlaps keep the first) and sphere chords."""
    for index, atom in enumerate(atoms, start=1):
        drawn = atom_disks(atom[None, :], layout.atom_radius_nm, layout.pixel_size_nm, layout.shape)
        if drawn is None:
            continue
        (rows, cols), mask, thickness = drawn
        region = layout.labels[rows, cols]
        region[mask & (region == 0)] = index
        layout.thickness_nm[rows, cols] += thickness
    layout.atoms = atoms
    layout.atom_label = np.arange(1, len(atoms) + 1, dtype=np.int32)
    layout.diameters_nm = np.full(len(atoms), 2 * layout.atom_radius_nm)


def _sample_objects(spec: LayoutSpec, layout: Layout, count: int, support: np.ndarray | None,
                    rng: np.random.Generator) -> None:
    """Particles or clusters: draw, then place without overlap (or touching) one by one."""
    ps = layout.pixel_size_nm
    gap_px = 1.0
    centers: list[tuple[float, float]] = []
    outlines: list[np.ndarray] = []
    diameters: list[float] = []
    atoms: list[np.ndarray] = []
    atom_labels: list[np.ndarray] = []
    spread_px = 2 * spec.diameter_nm_median / ps
    failures = 0
    for _ in range(count):
        diameter = float(spec.diameter_nm_median * math.exp(rng.normal(0, spec.diameter_sigma_log)))
        cluster_nm = None
        if spec.kind == "clusters":
            cluster_nm = _cluster_atoms_nm(_atoms_in_cluster(spec, diameter), spec.atom_bond_nm, rng)
            extent = np.hypot(cluster_nm[:, 0], cluster_nm[:, 1]).max() + spec.atom_radius_nm
            radius = np.full(OUTLINE_SAMPLES, extent)
        else:
            radius = draw_outline(spec, rng) * diameter
        placed = False
        touching = bool(centers) and rng.random() < spec.touching_fraction
        for _ in range(PLACEMENT_ATTEMPTS):
            if touching:
                # outlines meet along the line of centres, half a pixel apart: adjacent pixels
                other = int(rng.integers(len(centers)))
                direction = rng.uniform(0, 2 * math.pi)
                distance_px = (radius_at(outlines[other], np.array(direction))
                               + radius_at(radius, np.array(direction + math.pi))) / ps + 0.5
                center = (centers[other][0] + distance_px * math.sin(direction),
                          centers[other][1] + distance_px * math.cos(direction))
            else:
                center = _propose_center(spec, centers, layout.shape, spread_px, support, rng)
            placed = _place(spec, layout, center, radius, diameter, cluster_nm, touching, gap_px,
                            len(centers) + 1)
            if placed:
                break
        if not placed:
            failures += 1
            continue
        centers.append(center)
        outlines.append(radius)
        diameters.append(diameter)
        if cluster_nm is not None:
            atoms.append(np.asarray(center) + cluster_nm / ps)
            atom_labels.append(np.full(len(cluster_nm), len(centers), dtype=np.int32))
    layout.diameters_nm = np.asarray(diameters, dtype=np.float64)
    layout.metadata.update(requested=count, placed=len(centers), not_placed=failures)
    if spec.kind == "clusters":
        layout.atoms = np.concatenate(atoms) if atoms else np.empty((0, 2))
        layout.atom_label = np.concatenate(atom_labels) if atom_labels else np.empty(0, np.int32)
        layout.atom_z = np.full(len(layout.atoms), spec.material_z, dtype=np.int32)


def _place(spec: LayoutSpec, layout: Layout, center: tuple[float, float], radius_nm: np.ndarray,
           diameter_nm: float, cluster_nm: np.ndarray | None, touching: bool, gap_px: float,
           label: int) -> bool:
    """Write one object if it does not overlap another (keeping a gap unless touching)."""
    ps = layout.pixel_size_nm
    if cluster_nm is not None:
        drawn = atom_disks(np.asarray(center) + cluster_nm / ps, spec.atom_radius_nm, ps, layout.shape)
        if drawn is None:
            return False
        (rows, cols), mask, thickness = drawn
        from_footprint = object_footprint(center, radius_nm, 0.0, ps, layout.shape, gap_px)
        if from_footprint is None:
            return False
        existing = layout.labels[from_footprint.rows, from_footprint.cols]
        guard = from_footprint.mask if touching else from_footprint.margin
        if existing[guard].any():
            return False
    else:
        footprint = object_footprint(center, radius_nm, diameter_nm * spec.thickness_ratio, ps, layout.shape, gap_px)
        if footprint is None:
            return False
        rows, cols, mask, thickness = footprint.rows, footprint.cols, footprint.mask, footprint.thickness_nm
        guard = mask if touching else footprint.margin
        if layout.labels[rows, cols][guard].any():
            return False
    layout.labels[rows, cols][mask] = label
    layout.thickness_nm[rows, cols] += np.where(mask, thickness, 0)
    return True


# --------------------------------------------------------------------------- entry point

def sample_layout(spec: LayoutSpec, shape: tuple[int, int], pixel_size_nm: float,
                  rng: np.random.Generator) -> Layout:
    """Draw one layout of ``shape`` (rows, cols) pixels at ``pixel_size_nm``.

    Objects are placed one by one without overlap; a share
    ``touching_fraction`` is placed touching an earlier object. When the
    frame is too full to place an object after a few attempts it is skipped;
    ``layout.metadata`` records how many were requested and placed.
    """
    spec.validate()
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape must be (rows, cols) with both >= 1, got {shape!r}")
    shape = (int(shape[0]), int(shape[1]))
    if not (isinstance(pixel_size_nm, (int, float)) and math.isfinite(pixel_size_nm)
            and PIXEL_SIZE_RANGE_NM[0] <= pixel_size_nm <= PIXEL_SIZE_RANGE_NM[1]):
        raise InputError(f"pixel_size_nm must be within {PIXEL_SIZE_RANGE_NM[0]}–{PIXEL_SIZE_RANGE_NM[1]} nm, "
                         f"got {pixel_size_nm!r}")
    support = _support_mask(spec, shape, pixel_size_nm, rng)
    layout = Layout(labels=np.zeros(shape, np.int32), thickness_nm=np.zeros(shape, np.float32),
                    z_map=np.empty(0, np.float32), pixel_size_nm=float(pixel_size_nm), kind=spec.kind,
                    support=support, support_z=spec.support_z, atom_radius_nm=spec.atom_radius_nm)
    count = _object_count(spec, shape, pixel_size_nm, rng)
    if spec.kind == "atoms":
        _sample_single_atoms(spec, layout, count, support, rng)
    else:
        _sample_objects(spec, layout, count, support, rng)
    z_map = np.full(shape, float(spec.support_z), np.float32)
    if support is not None:
        z_map[~support] = 0.0
    z_map[layout.labels > 0] = float(spec.material_z)
    layout.z_map = z_map
    return layout
