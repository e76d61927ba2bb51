"""The morphology prior: what the objects of a lab's micrographs look like, in nm.

:class:`MorphologyPrior` is fitted to the instances a prior extractor found
(:meth:`MorphologyPrior.fit`) and summarises them as distributions: a lognormal
size in nm, aspect ratio and circularity, number density per nm² of support, contrast
against the local background, and a bank of example outlines. It is saved as
JSON (``prior.json``) and turned into a :class:`emcopilot.specimen.layout.LayoutSpec`
(:meth:`MorphologyPrior.layout_spec`) from which new label maps are drawn
(:meth:`MorphologyPrior.sample`).

:func:`estimate_pixel_size_nm` (from :mod:`emcopilot.specimen.pixel_size`) gives
uncalibrated images (JPEGs without metadata) a working scale: the typical object
size in pixels (:mod:`emcopilot.specimen.blob_scale`) against the recipe's expected size
in nm.

Numpy/scipy/scikit-image only; importing this module never imports torch.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .blob_scale import dominant_diameter_px, normalise_image  # noqa: F401 - part of this module's interface
from ..core.errors import InputError
from ..core.interfaces import Instances, Micrograph
from .pixel_size import estimate_pixel_size, estimate_pixel_size_nm, expected_diameter_nm  # noqa: F401 - ditto
from .pixel_size import resolve_pixel_size

if TYPE_CHECKING:
    from .layout import Layout, LayoutSpec
    from ..core.recipe import Sample

log = logging.getLogger(__name__)

#: Outlines kept in a prior's bank, and radial samples per outline.
OUTLINE_BANK_SIZE = 64
OUTLINE_POINTS = 64

PRIOR_FORMAT = "emcopilot.morphology_prior/1"


# --------------------------------------------------------------------------- the prior

def _pixel_size_of(micrograph: Micrograph, instances: Instances, sample: "Sample | None") -> float:
    """The micrograph's pixel size by the one rule every command uses (:func:`resolve_pixel_size`)."""
    record = resolve_pixel_size(micrograph, sample, instances)
    if record["pixel_size_nm"] is None:
        raise InputError(f"{micrograph.name}: no pixel size (file, --pixel-size-nm, a calibration table or an "
                         f"estimate): {record['reason']}")
    return float(record["pixel_size_nm"])


def normalised_outline(mask: np.ndarray, points: int = OUTLINE_POINTS) -> np.ndarray | None:
    """The outer contour of a binary object, centred and scaled to unit equivalent diameter.

    Returns ``points`` (row, col) vertices, or ``None`` for objects too small
    to have a contour.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool), 1)
    area = float(padded.sum())
    if area < 5:
        return None
    contours = find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return None
    contour = max(contours, key=len)
    # resample evenly along the perimeter
    steps = np.linalg.norm(np.diff(contour, axis=0), axis=1)
    position = np.concatenate([[0.0], np.cumsum(steps)])
    if position[-1] <= 0:
        return None
    targets = np.linspace(0, position[-1], points, endpoint=False)
    resampled = np.stack([np.interp(targets, position, contour[:, k]) for k in (0, 1)], axis=1)
    centred = resampled - resampled.mean(axis=0)
    return centred / math.sqrt(4 * area / math.pi)


@dataclass
class MorphologyPrior:
    """Fitted description of the objects of a set of micrographs (physical units).

    Sizes are equivalent diameters (disk of equal area), lognormal: median
    ``diameter_nm_median`` and ``diameter_sigma_log`` = std of ln d.
    ``aspect_ratio`` is major/minor axis of the fitted ellipse; ``circularity``
    is 4·pi·area/perimeter²; ``contrast`` is (object mean / mean of the
    background of its image) - 1, in the micrograph's own intensity units;
    ``touching_fraction`` is the share of objects sharing a border with
    another. ``outlines`` are example contours (row, col), centred, unit
    equivalent diameter.
    """

    kind: str
    count: int
    images: int
    diameter_nm_median: float
    diameter_sigma_log: float
    number_density_per_nm2: float
    aspect_ratio_mean: float = 1.15
    aspect_ratio_sd: float = 0.1
    circularity_mean: float = 0.9
    circularity_sd: float = 0.05
    solidity_mean: float = 0.95
    contrast_mean: float = 0.0
    contrast_sd: float = 0.0
    touching_fraction: float = 0.0
    material_z: int = 78
    support_z: int = 6
    atom_min_separation_nm: float = 0.2
    pixel_sizes_nm: list[float] = field(default_factory=list)
    outlines: list[list[list[float]]] = field(default_factory=list)

    # ----------------------------------------------------------------- fitting

    @classmethod
    def fit(cls, instances_list: Sequence[Instances], micrographs: Sequence[Micrograph],
            sample: "Sample | None" = None, rng: np.random.Generator | None = None) -> "MorphologyPrior":
        """Fit the distributions to the objects found in ``micrographs``.

        Label images give sizes and shapes; points without labels count
        towards the density only. With no object at all the sizes fall back
        to the sample's ``diameter_nm`` (a warning is logged); without a
        sample that is an :class:`InputError`.
        """
        from skimage.measure import regionprops

        if len(instances_list) != len(micrographs):
            raise InputError(f"MorphologyPrior.fit: {len(instances_list)} instances for "
                             f"{len(micrographs)} micrographs")
        rng = rng if rng is not None else np.random.default_rng(0)
        diameters, aspects, circularities, solidities, contrasts, outlines = [], [], [], [], [], []
        touching, objects, area_nm2, pixel_sizes, separations = 0, 0, 0.0, [], []
        for instances, micrograph in zip(instances_list, micrographs):
            pixel_size_nm = _pixel_size_of(micrograph, instances, sample)
            pixel_sizes.append(pixel_size_nm)
            # objects sit on the support: their density is per support area, not per frame (vacuum)
            dark_objects = getattr(sample, "particle_contrast", "bright") == "dark"
            area_nm2 += micrograph.data.size * pixel_size_nm ** 2 * support_fraction(micrograph.data, dark_objects)
            if instances.points is not None and len(instances.points) > 1:
                from scipy.spatial import cKDTree
                distances, _ = cKDTree(instances.points).query(instances.points, k=2)
                separations.append(float(np.percentile(distances[:, 1], 5)) * pixel_size_nm)
            labels = instances.labels
            if labels is None or not (labels > 0).any():
                objects += len(instances.points) if instances.points is not None else 0
                continue
            background = micrograph.data[labels == 0]
            background_mean = float(background.mean()) if background.size else float("nan")
            neighbours = _touching_ids(labels)
            for region in regionprops(labels, intensity_image=micrograph.data):
                objects += 1
                diameters.append(region.equivalent_diameter_area * pixel_size_nm)
                minor = max(region.axis_minor_length, 1e-6)
                aspects.append(max(1.0, region.axis_major_length / minor))
                perimeter = region.perimeter
                circularities.append(min(1.0, 4 * math.pi * region.area / perimeter ** 2) if perimeter > 0 else 1.0)
                solidities.append(region.solidity)
                if background_mean and np.isfinite(background_mean):
                    contrasts.append(float(region.intensity_mean) / background_mean - 1.0)
                touching += region.label in neighbours
                if len(outlines) < 4 * OUTLINE_BANK_SIZE and region.area >= 20:
                    outline = normalised_outline(region.image)
                    if outline is not None:
                        outlines.append(outline)
        return cls._from_measurements(sample, objects, len(micrographs), area_nm2, pixel_sizes,
                                      np.asarray(diameters), aspects, circularities, solidities, contrasts,
                                      touching, outlines, separations, rng)

    @classmethod
    def _from_measurements(cls, sample, objects, images, area_nm2, pixel_sizes, diameters, aspects,
                           circularities, solidities, contrasts, touching, outlines, separations, rng):
        kind = sample.kind if sample is not None else "particles"
        if len(diameters) >= 2:
            logs = np.log(diameters[diameters > 0])
            median, sigma = float(np.exp(logs.mean())), float(logs.std())
        elif sample is not None:
            log.warning("no object outlines to fit: sizes fall back to the recipe's diameter_nm %s",
                        list(sample.diameter_nm))
            low, high = (float(v) for v in sample.diameter_nm)
            median, sigma = math.sqrt(low * high), math.log(high / low) / (2 * 1.96)
        else:
            raise InputError("MorphologyPrior.fit found fewer than two objects and has no recipe sample "
                             "to fall back on")
        if len(outlines) > OUTLINE_BANK_SIZE:
            outlines = [outlines[i] for i in sorted(rng.choice(len(outlines), OUTLINE_BANK_SIZE, replace=False))]

        def mean_sd(values, default_mean, default_sd):
            values = np.asarray(values, float)
            return (float(values.mean()), float(values.std())) if len(values) else (default_mean, default_sd)

        aspect_mean, aspect_sd = mean_sd(aspects, 1.15, 0.1)
        circularity_mean, circularity_sd = mean_sd(circularities, 0.9, 0.05)
        contrast_mean, contrast_sd = mean_sd(contrasts, 0.0, 0.0)
        return cls(kind=kind, count=int(objects), images=int(images), diameter_nm_median=median,
                   diameter_sigma_log=sigma, number_density_per_nm2=objects / area_nm2 if area_nm2 else 0.0,
                   aspect_ratio_mean=aspect_mean, aspect_ratio_sd=aspect_sd,
                   circularity_mean=circularity_mean, circularity_sd=circularity_sd,
                   solidity_mean=float(np.mean(solidities)) if solidities else 0.95,
                   contrast_mean=contrast_mean, contrast_sd=contrast_sd,
                   touching_fraction=touching / len(diameters) if len(diameters) else 0.0,
                   material_z=int(sample.material_z) if sample is not None else 78,
                   support_z=int(sample.support_z) if sample is not None else 6,
                   atom_min_separation_nm=float(np.median(separations)) if separations else 0.2,
                   pixel_sizes_nm=[float(p) for p in pixel_sizes],
                   outlines=[np.round(o, 4).tolist() for o in outlines])

    # ----------------------------------------------------------------- JSON

    def to_json(self) -> str:
        return json.dumps({"format": PRIOR_FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "MorphologyPrior":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"prior.json is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.pop("format", None) != PRIOR_FORMAT:
            raise InputError(f"prior.json is not a {PRIOR_FORMAT} document")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"prior.json has unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    # ----------------------------------------------------------------- sampling

    def layout_spec(self, sample: "Sample | None" = None) -> "LayoutSpec":
        """The :class:`emcopilot.specimen.layout.LayoutSpec` these distributions describe.

        ``sample`` (optional) supplies the atomic numbers when given.
        """
        from .layout import LayoutSpec

        irregularity = float(np.clip(1.0 - self.solidity_mean, 0.0, 0.5) * 2)
        return LayoutSpec(
            kind=self.kind, diameter_nm_median=self.diameter_nm_median,
            diameter_sigma_log=self.diameter_sigma_log, number_density_per_nm2=self.number_density_per_nm2,
            aspect_ratio_mean=max(1.0, self.aspect_ratio_mean), aspect_ratio_sd=self.aspect_ratio_sd,
            irregularity=irregularity, touching_fraction=float(np.clip(self.touching_fraction, 0.0, 1.0)),
            outlines=[np.asarray(o, float) for o in self.outlines] or None,
            material_z=int(sample.material_z) if sample is not None else self.material_z,
            support_z=int(sample.support_z) if sample is not None else self.support_z,
            atom_min_separation_nm=self.atom_min_separation_nm)

    def sample(self, shape: tuple[int, int], pixel_size_nm: float, rng: np.random.Generator) -> "Layout":
        """Draw a new layout (label map and per-object attributes) from this prior."""
        from .layout import sample_layout
        return sample_layout(self.layout_spec(), shape, pixel_size_nm, rng)


#: Share of a frame below which the support estimate is not trusted (a nearly empty frame).
MIN_SUPPORT_FRACTION = 0.1
#: Vacuum differs from the support by at least this share of the support level (else: no vacuum).
VACUUM_CONTRAST = 0.3


def support_fraction(image: np.ndarray, dark_objects: bool = False) -> float:
    """The share of the frame covered by specimen rather than vacuum.

    The frame is smoothed to a hundredth of its side (particles and noise
    vanish, support and vacuum stay); vacuum is the dark end in HAADF (the
    bright end in bright field, ``dark_objects``). A pixel is support where the
    smoothed signal is more than a quarter of the way from the vacuum level
    (0.5th percentile) to a typical support level (75th percentile); a frame
    whose darkest part is within 30 % of that level has no vacuum (1.0).
    """
    from scipy import ndimage

    data = np.asarray(image, np.float32)
    step = max(1, max(data.shape) // 512)  # block-average large frames first: same result, 16x faster
    if step > 1:
        rows, cols = data.shape[0] // step * step, data.shape[1] // step * step
        data = data[:rows, :cols].reshape(rows // step, step, cols // step, step).mean(axis=(1, 3))
    if dark_objects:
        data = -data
    smooth = ndimage.gaussian_filter(data, max(data.shape) / 100)
    vacuum, support = np.percentile(smooth, [0.5, 75])
    if not support - vacuum > VACUUM_CONTRAST * abs(support):  # no region much darker than the support
        return 1.0
    return float(max(MIN_SUPPORT_FRACTION, np.mean(smooth > vacuum + 0.25 * (support - vacuum))))


def _touching_ids(labels: np.ndarray) -> set[int]:
    """Ids of objects that share a (4-connected) border with a different object."""
    found: set[int] = set()
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        touching = (a > 0) & (b > 0) & (a != b)
        found.update(np.unique(a[touching]).tolist())
        found.update(np.unique(b[touching]).tolist())
    return found
