"""Per-particle tables and the files every command writes.

:func:`particle_table` turns the instances found in one micrograph into the
particle table, one row per object::

    image, id, x, y, bbox_x0, bbox_y0, bbox_x1, bbox_y1, area_px, eq_diameter_px,
    [x_nm, y_nm, area_nm2, eq_diameter_nm,]   # only when the pixel size is known
    eccentricity, circularity, solidity, mean_intensity, touches_edge,
    perimeter_px, feret_px, min_feret_px, major_axis_px, minor_axis_px,
    [perimeter_nm, feret_nm, min_feret_nm, major_axis_nm, minor_axis_nm,]
    orientation_deg, aspect_ratio, small_for_shape,
    [atom_fit, atom_amplitude, atom_background, atom_sigma_px, [atom_sigma_nm,]]  # atoms only
    [pixel_size_nm, pixel_size_source]        # only when the pixel size is known

Every column, with its unit and definition, is described in
``docs/particle-table.md``. ``x`` is the column and ``y`` the row of the
centroid (pixels); boxes are half-open (``bbox_x1`` is one past the last
column), as in scikit-image. ``circularity`` is ``4·pi·area / perimeter²``
(1 for a disk), not clipped: objects whose digital outline is too coarse for it
are flagged ``small_for_shape`` instead. Feret diameters are measured on the
convex hull of the pixels' corners and ``orientation_deg`` from the x axis, as
Fiji's Analyze Particles reports them.

``pixel_size_nm`` is the pixel size the nm columns were computed with and
``pixel_size_source`` where it came from: ``file`` (the file's own calibration),
``--pixel-size-nm``, ``calibration table`` (``--calibration``) or ``estimated``
(an uncalibrated image whose scale the loop estimated against the recipe's
expected sizes: its nm columns restate the recipe more than they measure, and
``run.json`` gives the estimate's uncertainty). An image whose estimate is not
credible (too few objects stand out, or their sizes disagree) has no nm columns.

Points (single atoms) are rows too. Where the finder states the apparent atom
width (``instances.metadata["atom_fwhm_px"]``, on the micrograph's grid), each
point is refined by a 2-D Gaussian fitted to the micrograph
(:func:`emcopilot.analysis.atom_fit.fit_gaussians`; dark atoms on bright-field images are
fitted inverted) and the ``atom_*`` columns give the fit; otherwise the centre
is the point itself. When
the instances also hold a label image, the label ``k + 1`` is taken as the
disk of point ``k`` and gives the area and shape; a point without a disk has
NaN area, diameter and shape and the intensity of its pixel.

:func:`write_outputs` writes ``particles.csv``, ``particles.parquet`` and
``masks/<image>.tif`` (label images with the pixel size in ImageJ's tags, see
:func:`~emcopilot.pipeline.rundir.write_label_tiff`) atomically (temporary file, then ``os.replace``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..core.interfaces import Instances, Micrograph

PIXEL_COLUMNS = ("image", "id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area_px", "eq_diameter_px")
NM_COLUMNS = ("x_nm", "y_nm", "area_nm2", "eq_diameter_nm")
SHAPE_COLUMNS = ("eccentricity", "circularity", "solidity", "mean_intensity", "touches_edge")
#: lengths of each object as Fiji's Analyze Particles reports them, in pixels ...
LENGTH_COLUMNS_PX = ("perimeter_px", "feret_px", "min_feret_px", "major_axis_px", "minor_axis_px")
#: ... and in nm where the pixel size is known
LENGTH_COLUMNS_NM = ("perimeter_nm", "feret_nm", "min_feret_nm", "major_axis_nm", "minor_axis_nm")
FIT_COLUMNS = ("orientation_deg", "aspect_ratio", "small_for_shape")
CALIBRATION_COLUMNS = ("pixel_size_nm", "pixel_size_source")
#: the Gaussian fitted to each atom (tables of points only, see :mod:`emcopilot.analysis.atom_fit`)
ATOM_COLUMNS_PX = ("atom_fit", "atom_amplitude", "atom_background", "atom_sigma_px")
ATOM_COLUMNS_NM = ("atom_sigma_nm",)
#: below this equivalent diameter a digital perimeter is too coarse for circularity (a digital disk of
#: 4 px scores 1.28, of 6 px 0.98): such objects are flagged ``small_for_shape``
SMALL_FOR_SHAPE_PX = 6.0

_REGION_PROPERTIES = ("label", "centroid", "bbox", "area", "eccentricity", "perimeter", "solidity",
                      "intensity_mean", "axis_major_length", "axis_minor_length", "orientation", "coords")
_SHAPE_KEYS = ("area_px", "eccentricity", "circularity", "solidity", "perimeter_px", "feret_px", "min_feret_px",
               "major_axis_px", "minor_axis_px", "orientation_deg", "aspect_ratio")


def columns(calibrated: bool, atoms: bool = False) -> list[str]:
    """The particle-table columns, in order, with or without the nm columns (and the atom fit's)."""
    return (list(PIXEL_COLUMNS) + (list(NM_COLUMNS) if calibrated else []) + list(SHAPE_COLUMNS)
            + list(LENGTH_COLUMNS_PX) + (list(LENGTH_COLUMNS_NM) if calibrated else []) + list(FIT_COLUMNS)
            + (list(ATOM_COLUMNS_PX) + (list(ATOM_COLUMNS_NM) if calibrated else []) if atoms else [])
            + (list(CALIBRATION_COLUMNS) if calibrated else []))


def feret_diameters(coords: np.ndarray) -> tuple[float, float]:
    """Largest and smallest caliper width (Feret diameters, px) of the pixels at ``coords`` (N, 2).

    Measured on the convex hull of the pixels' corners, as Fiji measures its traced outline: a single
    pixel is sqrt(2) long and 1 wide. The smallest width is the least, over the hull's edges, of the
    farthest hull point from that edge (rotating calipers).
    """
    from scipy.spatial import ConvexHull

    corners = (np.asarray(coords, float)[:, None, :] + np.array([[-.5, -.5], [-.5, .5], [.5, -.5], [.5, .5]])
               ).reshape(-1, 2)
    hull = corners[ConvexHull(corners).vertices]  # corners of even one pixel span an area
    differences = hull[:, None, :] - hull[None, :, :]
    largest = float(np.sqrt((differences ** 2).sum(-1)).max())
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], 1) / np.linalg.norm(edges, axis=1)[:, None]
    # widths[e, j]: distance of hull point j from the line through edge e
    widths = np.abs(np.einsum("ejk,ek->ej", hull[None, :, :] - hull[:, None, :], normals))
    return largest, float(widths.max(axis=1).min())


def _region_table(labels: np.ndarray, intensity: np.ndarray) -> pd.DataFrame:
    from skimage.measure import regionprops_table

    if not (labels > 0).any():
        return pd.DataFrame({key: [] for key in ("id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
                                                 "mean_intensity", *_SHAPE_KEYS)})
    props = regionprops_table(labels, intensity_image=intensity, properties=_REGION_PROPERTIES)
    area = props["area"].astype(float)
    perimeter = props["perimeter"].astype(float)
    circularity = np.divide(4 * np.pi * area, perimeter ** 2, out=np.full_like(area, np.nan), where=perimeter > 0)
    ferets = np.array([feret_diameters(coords) for coords in props["coords"]], float).reshape(-1, 2)
    major, minor = props["axis_major_length"].astype(float), props["axis_minor_length"].astype(float)
    return pd.DataFrame({
        "id": props["label"].astype(np.int64),
        "x": props["centroid-1"], "y": props["centroid-0"],
        "bbox_x0": props["bbox-1"], "bbox_y0": props["bbox-0"],
        "bbox_x1": props["bbox-3"], "bbox_y1": props["bbox-2"],
        "area_px": area,
        "eccentricity": props["eccentricity"],
        "circularity": circularity,
        "solidity": props["solidity"],
        "mean_intensity": props["intensity_mean"],
        "perimeter_px": perimeter,
        "feret_px": ferets[:, 0], "min_feret_px": ferets[:, 1],
        "major_axis_px": major, "minor_axis_px": minor,
        # skimage: angle of the major axis to the rows; Fiji: to the x axis, counter-clockwise as displayed
        "orientation_deg": np.mod(90.0 + np.degrees(props["orientation"].astype(float)), 180.0),
        "aspect_ratio": np.divide(major, minor, out=np.full_like(major, np.nan), where=minor > 0),
    })


def _point_table(points: np.ndarray, labels: np.ndarray | None, intensity: np.ndarray,
                 atom_fwhm_px: float | None = None, bright: bool = True) -> pd.DataFrame:
    ids = np.arange(1, len(points) + 1, dtype=np.int64)
    fit = None
    if atom_fwhm_px and len(points):
        from .atom_fit import FWHM_PER_SIGMA, fit_gaussians
        fit = fit_gaussians(intensity if bright else -np.asarray(intensity, np.float64), points,
                            float(atom_fwhm_px) / FWHM_PER_SIGMA)
        points = fit.points
    table = pd.DataFrame({"id": ids, "x": points[:, 1], "y": points[:, 0]})
    if fit is not None:
        table["atom_fit"] = fit.converged
        table["atom_amplitude"] = fit.amplitude if bright else -fit.amplitude
        table["atom_background"] = fit.background if bright else -fit.background
        table["atom_sigma_px"] = fit.sigma_px
    else:
        table["atom_fit"] = False
        for key in ATOM_COLUMNS_PX[1:]:
            table[key] = np.nan
    regions = _region_table(labels, intensity) if labels is not None else None
    if regions is not None and len(regions):
        regions = regions.drop(columns=["x", "y"])
        table = table.merge(regions, on="id", how="left")
    height, width = intensity.shape
    rows = np.clip(np.round(points[:, 0]).astype(int), 0, height - 1)
    cols = np.clip(np.round(points[:, 1]).astype(int), 0, width - 1)
    no_disk = table.get("area_px", pd.Series(np.nan, index=table.index)).isna().to_numpy()
    for key, value in (("bbox_x0", cols), ("bbox_y0", rows), ("bbox_x1", cols + 1), ("bbox_y1", rows + 1)):
        if key not in table:
            table[key] = value
        table.loc[no_disk, key] = value[no_disk]
    for key in _SHAPE_KEYS:
        if key not in table:
            table[key] = np.nan
    if "mean_intensity" not in table:
        table["mean_intensity"] = np.nan
    table.loc[no_disk, "mean_intensity"] = intensity[rows, cols][no_disk]
    return table


def _nm_scale(micrograph: Micrograph, pixel_size_nm: float | None) -> float | None:
    """The pixel size nm are reported with: the override, else the micrograph's, none where its
    estimate is not credible (:func:`emcopilot.specimen.pixel_size.reported_pixel_size_nm`)."""
    from ..specimen.pixel_size import reported_pixel_size_nm
    if reported_pixel_size_nm(micrograph) is None and micrograph.pixel_size_nm is not None:
        return None
    return pixel_size_nm if pixel_size_nm is not None else micrograph.pixel_size_nm


def particle_table(instances: Instances, micrograph: Micrograph,
                   pixel_size_nm: float | None = None) -> pd.DataFrame:
    """The particle table of one micrograph (see the module docstring).

    ``pixel_size_nm`` overrides the micrograph's calibration (e.g. an estimate
    for an uncalibrated image); without either, the nm columns are left out. The
    ``pixel_size_source`` column is the micrograph's ``metadata["pixel_size_source"]``,
    else ``estimated`` for a pixel size given to an uncalibrated micrograph, else ``file``. A
    micrograph whose estimated pixel size is not credible (``metadata["pixel_size_credible"]``
    false, see :mod:`emcopilot.specimen.pixel_size`) keeps pixels only.
    """
    if pixel_size_nm is not None and micrograph.pixel_size_nm is None:
        source = micrograph.metadata.get("pixel_size_source", "estimated")
    else:
        source = micrograph.metadata.get("pixel_size_source", "file")
    pixel_size_nm = _nm_scale(micrograph, pixel_size_nm)
    labels = instances.labels
    if labels is not None and labels.shape != micrograph.shape:
        from ..core.errors import InputError
        raise InputError(f"{micrograph.name}: label image {labels.shape} does not match the micrograph "
                         f"{micrograph.shape}")
    atoms = instances.points is not None
    if atoms:
        bright = not (micrograph.modality or "").lower().startswith("bf")
        table = _point_table(instances.points, labels, micrograph.data, instances.metadata.get("atom_fwhm_px"),
                             bright)
    else:
        table = _region_table(labels, micrograph.data)
    height, width = micrograph.shape
    table["image"] = micrograph.name
    table["eq_diameter_px"] = np.sqrt(4 * table["area_px"].astype(float) / np.pi)
    table["small_for_shape"] = (table["eq_diameter_px"] < SMALL_FOR_SHAPE_PX).to_numpy() \
        & table["area_px"].notna().to_numpy()
    table["touches_edge"] = ((table["bbox_x0"] <= 0) | (table["bbox_y0"] <= 0)
                             | (table["bbox_x1"] >= width) | (table["bbox_y1"] >= height)).astype(bool)
    if pixel_size_nm is not None:
        table["x_nm"] = table["x"] * pixel_size_nm
        table["y_nm"] = table["y"] * pixel_size_nm
        table["area_nm2"] = table["area_px"] * pixel_size_nm ** 2
        table["eq_diameter_nm"] = table["eq_diameter_px"] * pixel_size_nm
        for px_column, nm_column in zip(LENGTH_COLUMNS_PX, LENGTH_COLUMNS_NM):
            table[nm_column] = table[px_column] * pixel_size_nm
        if atoms:
            table["atom_sigma_nm"] = table["atom_sigma_px"] * pixel_size_nm
        table["pixel_size_nm"] = float(pixel_size_nm)
        table["pixel_size_source"] = source
    table = table[columns(pixel_size_nm is not None, atoms)].reset_index(drop=True)
    for key in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
        table[key] = table[key].astype(np.int64)
    table["id"] = table["id"].astype(np.int64)
    return table


def mask_file_name(image_name: str) -> str:
    """``masks/`` file name of an image: unsafe characters become ``_``, and then, so that two
    images never share a file (``a b.png`` and ``a_b.png``, ``A/x.png`` and ``A_x.png``), a short
    hash of the exact name follows."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_.#" else "_" for c in image_name)
    if safe != image_name:
        digest = hashlib.sha256(image_name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        safe = f"{safe}-{digest}"
    return safe + ".tif"


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells cannot start a spreadsheet formula.

    A text cell that begins with ``= + - @``, a tab or a carriage return (an
    image named ``=HYPERLINK(...).png``) gets a leading apostrophe, which
    spreadsheets show as text; numbers are left alone. Only the CSV is
    treated so: the Parquet table keeps the names exactly. The project's own
    fixed words (the calibration sources, ``--pixel-size-nm`` among them) are
    kept as they are: they come from no file.
    """
    from ..io.calibration import SOURCES
    from ..core.files import formula_safe

    own_words = set(SOURCES)
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column].dtype):
            out[column] = [formula_safe(value) if isinstance(value, str) and value not in own_words else value
                           for value in out[column]]
    return out


def write_table(out_dir: Path, tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-image tables and write ``particles.csv`` and ``particles.parquet``."""
    from ..core.files import atomic_path

    out_dir = Path(out_dir)
    non_empty = [table for table in tables if len(table)]
    table = pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=columns(False))
    with atomic_path(out_dir / "particles.csv") as temporary:
        spreadsheet_safe(table).to_csv(temporary, index=False)
    with atomic_path(out_dir / "particles.parquet") as temporary:
        table.to_parquet(temporary, index=False)
    return table


def write_outputs(out_dir: Path, micrographs: Sequence[Micrograph], instances_list: Sequence[Instances],
                  pixel_sizes_nm: Sequence[float | None] | None = None) -> pd.DataFrame:
    """Write the tables and ``masks/<image>.tif`` of many micrographs; return the table.

    ``pixel_sizes_nm`` optionally overrides each micrograph's calibration.
    Points without a label image give an empty (all-zero) mask.
    """
    from ..core.files import write_label_tiff

    out_dir = Path(out_dir)
    pixel_sizes_nm = list(pixel_sizes_nm) if pixel_sizes_nm is not None else [None] * len(micrographs)
    tables = []
    for micrograph, instances, pixel_size_nm in zip(micrographs, instances_list, pixel_sizes_nm):
        tables.append(particle_table(instances, micrograph, pixel_size_nm))
        labels = instances.labels if instances.labels is not None else np.zeros(micrograph.shape, np.int32)
        # the mask opens at the scale its table reports (in pixels where the estimate is not credible)
        write_label_tiff(out_dir / "masks" / mask_file_name(micrograph.name), labels,
                         _nm_scale(micrograph, pixel_size_nm))
    return write_table(out_dir, tables)
