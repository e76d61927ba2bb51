"""``report.html``: one self-contained page a microscopist can check by eye.

Its thumbnails link to full-resolution overlays in ``overlays/`` beside it, each
object labelled with its ``id`` in ``particles.csv``; every overlay has a scale bar
(in nm where the scale is known or credibly estimated, marked "estimated" then,
else in pixels).

Figures are drawn with matplotlib on figures of their own (pyplot's backend is left alone, so a
notebook's inline plots keep working) and embedded as base64 PNG; the page has no scripts and
loads nothing from the network.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.interfaces import Instances, Micrograph
from ..core.files import write_text

MAX_OVERLAYS = 12
OVERLAY_PX = 640
#: full-resolution overlays (``overlays/`` beside the report) are at most this many pixels a side
FULL_OVERLAY_PX = 2048


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(png_b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'


def _display(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / (high - low + 1e-12), 0, 1)


def nice_length(target: float) -> float:
    """The 1, 2 or 5 x 10^k at or below ``target`` (a scale bar's length)."""
    if not target > 0:
        return 0.0
    exponent = 10.0 ** np.floor(np.log10(target))
    return float(max(m for m in (1.0, 2.0, 5.0) if m * exponent <= target * (1 + 1e-9)) * exponent)


def _scale_bar(axis, width_px: float, step: int, nm_per_px: float | None, estimated: bool, fontsize: float) -> None:
    """A scale bar at the lower right: about a fifth of the width, in nm where the scale is known."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    if nm_per_px:
        length = nice_length(0.2 * width_px * nm_per_px)
        label, length_px = f"{length:g} nm" + (" (estimated)" if estimated else ""), length / nm_per_px
    else:
        length_px = nice_length(0.2 * width_px)
        label = f"{length_px:g} px"
    bar = AnchoredSizeBar(axis.transData, length_px / step, label, "lower right", pad=0.3, color="white",
                          frameon=True, size_vertical=max(1.0, width_px / step / 150),
                          fontproperties={"size": fontsize})
    bar.patch.set(facecolor="black", alpha=0.45, edgecolor="none")  # readable on bright support too
    axis.add_artist(bar)


def overlay_figure(micrograph: Micrograph, instances: Instances, *, nm_per_px: float | None = None,
                   estimated: bool = False, ids=None, full: bool = False) -> str:
    """Outlines (and atoms) over the micrograph with a scale bar; base64 PNG.

    A thumbnail by default; ``full``: one image pixel per output pixel (frames above
    :data:`FULL_OVERLAY_PX` are halved until they fit) with each object's table ``id`` (``ids``:
    rows of x, y, id) written beside it.
    """
    from matplotlib.figure import Figure
    from skimage.segmentation import find_boundaries
    limit = FULL_OVERLAY_PX if full else OVERLAY_PX
    step = max(1, int(np.ceil(max(micrograph.shape) / limit)))  # downsample big frames
    image = _display(micrograph.data[::step, ::step])
    if full:
        height, width = image.shape
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        axis = fig.add_axes((0, 0, 1, 1))
    else:
        fig = Figure(figsize=(5, 5))
        axis = fig.subplots()
    axis.imshow(image, cmap="gray", interpolation="nearest")
    if instances.labels is not None and instances.labels.any():
        edges = find_boundaries(instances.labels, mode="inner")[::step, ::step]
        colour = np.zeros(edges.shape + (4,))
        colour[edges] = (1.0, 0.55, 0.0, 0.9)
        axis.imshow(colour, interpolation="nearest")
    if instances.points is not None and len(instances.points):
        axis.plot(instances.points[:, 1] / step, instances.points[:, 0] / step, "o", mfc="none",
                  mec="#00c8ff", ms=4, mew=0.8)
    if full and ids is not None:
        for x, y, identifier in ids:
            axis.text(x / step + 2, y / step - 2, str(int(identifier)), color="#ffe14d", fontsize=6,
                      ha="left", va="bottom", parse_math=False)
    _scale_bar(axis, micrograph.shape[1], step, nm_per_px, estimated, 7 if full else 8)
    if not full:
        # parse_math off: a file name such as a$\frac$.png is text, not mathtext to be rendered (or fail)
        axis.set_title(f"{micrograph.name}: {instances.count} objects", fontsize=9, parse_math=False)
    axis.set_axis_off()
    if full:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    return _figure_png(fig)


def plot_size_distribution(axis, table, statistics: Mapping[str, Any]) -> bool:
    """Draw the size histogram (edge-touching objects excluded), its lognormal fit and the mean's
    95 % interval on a matplotlib ``axis``; ``False`` (nothing drawn) with fewer than 2 sizes."""
    column, unit = statistics["diameter"], statistics["unit"]
    if not len(table) or column not in table:
        return False
    inside = table[~table["touches_edge"].astype(bool)]
    diameters = inside[column].to_numpy(float)
    diameters = diameters[np.isfinite(diameters) & (diameters > 0)]
    if len(diameters) < 2:
        return False
    pooled = statistics["pooled"]
    axis.hist(diameters, bins=min(40, max(8, len(diameters) // 5)), density=True, color="#7a9cc6",
              edgecolor="white", label=f"n = {len(diameters)} (edge-touching excluded)")
    fit = pooled.get("lognormal")
    if fit and fit["sigma"] > 1e-3:  # objects of one size (atoms drawn as equal disks) have no curve to draw
        grid = np.linspace(diameters.min() * 0.8, diameters.max() * 1.1, 300)
        pdf = np.exp(-(np.log(grid) - fit["mu"]) ** 2 / (2 * fit["sigma"] ** 2)) / (grid * fit["sigma"] * np.sqrt(2 * np.pi))
        axis.plot(grid, pdf, color="#c0392b", label=f"lognormal: median {fit['median']:.3g} {unit}, σ_ln {fit['sigma']:.2f}")
    if "ci" in pooled:
        low, high = pooled["ci"]["mean"]
        axis.axvspan(low, high, color="#f1c40f", alpha=0.35, label=f"mean {pooled['mean']:.3g} {unit}, 95% CI [{low:.3g}, {high:.3g}]")
    axis.set_xlabel(f"equivalent diameter ({unit})")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    return True


def histogram_figure(table, statistics: Mapping[str, Any]) -> str | None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.6))
    axis = fig.subplots()
    if not plot_size_distribution(axis, table, statistics):
        return None
    return _figure_png(fig)


def _atom_summary(table, pooled: Mapping[str, Any]) -> dict[str, Any]:
    """Single atoms have no size: their count, density and fitted profiles instead."""
    from ..analysis.atom_fit import FWHM_PER_SIGMA
    fitted = table[table["atom_fit"].astype(bool)]
    rows = {"images": pooled.get("images"), "atoms detected": int(len(table)),
            "with a fitted Gaussian (sub-pixel position)": int(len(fitted))}
    if "atom_sigma_nm" in table and len(fitted):
        rows["median fitted FWHM (nm)"] = float(np.nanmedian(fitted["atom_sigma_nm"]) * FWHM_PER_SIGMA)
    elif len(fitted):
        rows["median fitted FWHM (px)"] = float(np.nanmedian(fitted["atom_sigma_px"]) * FWHM_PER_SIGMA)
    unit = "nm" if "atom_sigma_nm" in table else "px"
    if pooled.get("density_per_unit2") is not None:
        rows[f"density (per {unit}²)"] = pooled.get("density_per_unit2")
    return rows


def atom_histogram_figure(table) -> str | None:
    """The fitted peak heights: one atom per column gives one mode, dimers and heavier atoms more."""
    from matplotlib.figure import Figure
    heights = table.loc[table["atom_fit"].astype(bool), "atom_amplitude"].to_numpy(float)
    heights = heights[np.isfinite(heights)]
    if len(heights) < 2:
        return None
    fig = Figure(figsize=(6, 3.6))
    axis = fig.subplots()
    axis.hist(heights, bins=min(40, max(5, len(heights) // 8)), color="#4c72b0", alpha=0.8)
    axis.set_xlabel("fitted peak height above the local background (image units)")
    axis.set_ylabel("atoms")
    return _figure_png(fig)


def montage_figure(real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray]) -> str | None:
    from matplotlib.figure import Figure
    count = min(4, len(real), len(synthetic))
    if count == 0:
        return None
    fig = Figure(figsize=(2.4 * count, 5))
    axes = fig.subplots(2, count, squeeze=False)
    for column in range(count):
        for row, (images, title) in enumerate(((real, "real"), (synthetic, "synthetic"))):
            axes[row, column].imshow(_display(images[column]), cmap="gray")
            axes[row, column].set_title(title, fontsize=8)
            axes[row, column].set_axis_off()
    return _figure_png(fig)


def _series(history: Mapping[str, Any]) -> tuple[list | None, dict[str, list]]:
    """(x axis, named curves) of a training history: numeric lists as long as its ``step`` list."""
    steps = history.get("step")
    curves = {name: values for name, values in history.items()
              if name not in ("step", "steps") and isinstance(values, list) and len(values) > 1
              and all(isinstance(v, (int, float)) for v in values)}
    if isinstance(steps, list):
        curves = {name: values for name, values in curves.items() if len(values) == len(steps)}
    return (steps if isinstance(steps, list) else None), curves


def curves_figure(histories: Mapping[str, Mapping[str, Any]]) -> str | None:
    from matplotlib.figure import Figure
    histories = dict(histories)
    for stage, history in list(histories.items()):  # a stage's own sub-histories (e.g. self-training)
        for name, sub in (history or {}).items():
            if isinstance(sub, Mapping) and isinstance(sub.get("step"), list):
                histories[f"{stage}: {name}"] = sub
    panels = {stage: _series(history or {}) for stage, history in histories.items()}
    panels = {stage: panel for stage, panel in panels.items() if panel[1]}
    if not panels:
        return None
    fig = Figure(figsize=(5 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for axis, (stage, (steps, curves)) in zip(axes[0], panels.items()):
        for name, values in curves.items():
            axis.plot(steps if steps is not None else range(len(values)), values, label=name)
        axis.set_title(stage, fontsize=9)
        axis.set_xlabel("step" if steps is not None else "logged step")
        if all(v > 0 for values in curves.values() for v in values):
            axis.set_yscale("log")
        axis.legend(fontsize=7)
    return _figure_png(fig)


COMPARISONS = {"held_out_synthetic": "held-out synthetic images", "real_vs_priors": "real images vs the priors",
               "realism": "synthetic vs real images"}


def metric_rows(metrics: Mapping[str, Any]) -> dict[str, str]:
    """One row per comparison and metric: ``held-out synthetic images (8) · detection`` -> ``f1 0.91, ...``."""
    rows = {}
    for comparison, block in metrics.items():
        if not isinstance(block, Mapping):
            continue
        if comparison == "skipped":
            rows.update({f"{name} (not scored)": reason for name, reason in block.items()})
            continue
        count = block.get("images", block.get("real_images"))
        title = COMPARISONS.get(comparison, comparison) + (f" ({count})" if count is not None else "")
        for name, values in block.items():
            if isinstance(values, Mapping):
                rows[f"{title} · {name}"] = ", ".join(f"{key} {_fmt(value)}" for key, value in values.items())
    return rows


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, default=str)[:300]
    return str(value)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:260px}
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
.warning{background:#fff4d6;border:1px solid #e0b44c;border-radius:4px;padding:.6em 1em;margin:.6em 0}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.8em}"""


#: a size distribution whose median lies within this factor of an end of the recipe's diameter_nm
#: range is said to sit at the edge of it
RANGE_EDGE_FACTOR = 1.2


def run_warnings(*, histories: Mapping[str, Any], statistics: Mapping[str, Any],
                 images: Mapping[str, Mapping[str, Any]], diameter_nm: Sequence[float],
                 planned_steps: Mapping[str, int], kind: str = "particles") -> list[str]:
    """What a reader of the report must know before quoting its numbers, each with its fix.

    Training cut short by ``max_minutes`` (steps done of planned), images where nothing was found,
    images whose scale was estimated (``images``: ``run.json["images"]``), and a size distribution
    at an edge of the recipe's range (not for single atoms, whose "size" is the disk drawn for each).
    """
    warnings = []
    for stage, history in list(histories.items()):
        for name, sub in (history or {}).items():  # e.g. the segmenter's self-training
            if isinstance(sub, Mapping) and sub.get("stopped_early"):
                warnings.append(f"The {stage}'s {'self-training' if name == 'adapt' else name} trained "
                                f"{sub.get('steps', '?')} of {sub.get('planned_steps', '?')} planned steps "
                                f"({sub['stopped_early']}). Give more time with --max-minutes, or run on a GPU "
                                f"(--profile full).")
        if history and history.get("stopped_early"):
            done = history.get("steps", len(history.get("step", [])))
            warnings.append(f"The {stage} trained {done} of {planned_steps.get(stage, '?')} planned steps "
                            f"({history['stopped_early']}): results are those of a shorter training. Give "
                            f"more time with --max-minutes, or run on a GPU (--profile full).")
    empty = [name for name, stats in statistics.get("per_image", {}).items() if not stats.get("detected")]
    if empty:
        warnings.append(f"No objects were found in {len(empty)} image(s): {', '.join(empty[:10])}"
                        f"{' ...' if len(empty) > 10 else ''}. Check that they show the recipe's material "
                        f"system and scale, or that their pixel size is right.")
    estimated = {name: entry.get("pixel_size_estimate") or {} for name, entry in images.items()
                 if entry.get("pixel_size_source") == "estimated"}
    if estimated:
        spreads = [entry["relative_uncertainty"] for entry in estimated.values() if "relative_uncertainty" in entry]
        low, high = (round(100 * min(spreads)), round(100 * max(spreads))) if spreads else (0, 0)
        spread = (f" (+/- {low}{f'-{high}' if high > low else ''} % at one standard deviation)" if spreads else "")
        warnings.append(f"The pixel size of {len(estimated)} image(s) was estimated, not read{spread}: their sizes "
                        f"in nm restate the recipe's expected diameters ({diameter_nm[0]:g}-{diameter_nm[1]:g} nm) "
                        f"more than they measure the sample. Give --pixel-size-nm or --calibration table.csv.")
    refused = {name: entry.get("reason") for name, entry in estimated.items() if entry.get("credible") is False}
    if refused:
        warnings.append(f"No size in nm is reported for {len(refused)} image(s) whose estimated scale is not "
                        f"credible: " + "; ".join(f"{name}: {reason}" for name, reason in list(refused.items())[:5])
                        + (" ..." if len(refused) > 5 else "") + ". Their tables are in pixels; give their "
                        "pixel size with --calibration table.csv.")
    median = statistics.get("pooled", {}).get("median")
    if kind != "atoms" and statistics.get("unit") == "nm" and median and len(diameter_nm) == 2:
        low, high = (float(v) for v in diameter_nm)
        if median < low * RANGE_EDGE_FACTOR or median > high / RANGE_EDGE_FACTOR:
            warnings.append(f"The median diameter, {median:.3g} nm, is at the edge of the recipe's range "
                            f"({low:g}-{high:g} nm): the sample may lie outside what the recipe was made for. "
                            f"Choose a recipe whose diameter_nm covers it, or check the pixel size.")
    return warnings


def _scale_text(entry: Mapping[str, Any] | None) -> str:
    """``, 0.25 nm/px (estimated, +/- 75 %)`` for one image's ``run.json["images"]`` entry."""
    if not entry or not entry.get("pixel_size_nm"):
        return ""
    source = entry.get("pixel_size_source", "file")
    estimate = entry.get("pixel_size_estimate") or {}
    if "relative_uncertainty" in estimate:
        source += f", +/- {100 * estimate['relative_uncertainty']:.0f} %"
    if entry.get("pixel_size_credible") is False:
        source += ", not credible: sizes in px"
    return f", {entry['pixel_size_nm']:.4g} nm/px ({source})"


def _overlay_link(folder: Path, micrograph: Micrograph, instances: Instances, table,
                  images: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """The HTML of a thumbnail linking to ``overlays/<image>.png``, both with a scale bar at the image's scale, and the overlay's relative path."""
    from ..analysis.measure import mask_file_name
    from ..core.files import atomic_path
    entry = images.get(micrograph.name) or {}
    nm_per_px = entry.get("pixel_size_nm", micrograph.pixel_size_nm)
    if entry.get("pixel_size_credible") is False:
        nm_per_px = None  # its table is in pixels: so is its bar
    estimated = entry.get("pixel_size_source") == "estimated"
    rows = None
    if table is not None and len(table) and {"image", "x", "y", "id"} <= set(table.columns):
        mine = table[table["image"] == micrograph.name]
        rows = mine[["x", "y", "id"]].to_numpy()
    full = overlay_figure(micrograph, instances, nm_per_px=nm_per_px, estimated=estimated, ids=rows, full=True)
    name = "overlays/" + mask_file_name(micrograph.name)[:-len(".tif")] + ".png"
    (folder / "overlays").mkdir(exist_ok=True)
    with atomic_path(folder / name) as temporary:
        Path(temporary).write_bytes(base64.b64decode(full))
    thumbnail = _img(overlay_figure(micrograph, instances, nm_per_px=nm_per_px, estimated=estimated),
                     f"detections on {micrograph.name}")
    return f'<a href="{html.escape(name)}">{thumbnail}</a>', name


def write_report(path: Path, *, title: str, micrographs: Sequence[Micrograph], instances: Sequence[Instances],
                 table, statistics: Mapping[str, Any], run_info: Mapping[str, Any],
                 synthetic: Sequence[np.ndarray] = (), histories: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
                 warnings: Sequence[str] = ()) -> Path:
    """Write the report; returns its path. ``warnings`` are shown first, each in a box."""
    sections = [f"<h1>{html.escape(title)}</h1>"]
    sections += [f"<div class='warning' role='alert'>{html.escape(text)}</div>" for text in warnings]
    sections += [f"<p>{html.escape(note)}</p>" for note in notes]
    pooled = statistics.get("pooled", {})
    unit = statistics.get("unit", "px")
    summary = {"images": pooled.get("images"), "objects detected": pooled.get("detected"),
               "measured (not touching the edge)": pooled.get("count"),
               f"mean diameter ({unit})": pooled.get("mean"), f"median diameter ({unit})": pooled.get("median"),
               f"std ({unit})": pooled.get("std"), f"volume-weighted mean ({unit})": pooled.get("volume_weighted_mean"),
               "95% CI of the mean (sampling)": (pooled.get("ci") or {}).get("mean"),
               "95% CI of the mean (sampling and estimated scale)": (pooled.get("ci_total") or {}).get("mean"),
               f"density (per {unit}²)": pooled.get("density_per_unit2")}
    if table is not None and "atom_fit" in getattr(table, "columns", ()):
        sections.append("<h2>Atoms</h2>" + _table(_atom_summary(table, pooled)))
        histogram = atom_histogram_figure(table)
        if histogram:
            sections.append(_img(histogram, "histogram of the fitted atom peak heights"))
    else:
        sections.append("<h2>Size distribution</h2>" + _table({k: v for k, v in summary.items() if v is not None}))
        histogram = histogram_figure(table, statistics)
        if histogram:
            sections.append(_img(histogram, "size histogram with lognormal fit"))
    chosen = list(range(len(micrographs)))[:: max(1, int(np.ceil(len(micrographs) / MAX_OVERLAYS)))]
    images = run_info.get("images") or {}
    links = [_overlay_link(Path(path).parent, micrographs[i], instances[i], table, images) for i in chosen]
    overlays = "".join(link for link, _ in links)
    written = {name for _, name in links}
    for stale in (Path(path).parent / "overlays").glob("*.png"):  # an earlier run's images in the same folder
        if f"overlays/{stale.name}" not in written:
            stale.unlink()
    sections.append(f"<h2>Detections ({len(chosen)} of {len(micrographs)} images)</h2>"
                    "<p>Each thumbnail opens the full-resolution overlay, with every object's <code>id</code> "
                    "from <code>particles.csv</code>.</p>"
                    f"<div class='grid'>{overlays}</div>")
    montage = montage_figure([m.data for m in micrographs], synthetic)
    if montage:
        sections.append("<h2>Real vs synthetic</h2>" + _img(montage, "real and synthetic micrographs"))
    curves = curves_figure(histories or {})
    if curves:
        sections.append("<h2>Training</h2>" + _img(curves, "training curves"))
    if metrics:
        sections.append("<h2>Label-free scores</h2><p>No labels exist for the real micrographs: the segmenter is "
                        "scored on synthetic images it did not train on (an upper bound on the real score), "
                        "against the prior extractor on the real images (agreement, not accuracy), and the "
                        "synthetic images against the real ones.</p>" + _table(metric_rows(metrics)))
    per_image = {name: f"{s.get('count', 0)} objects, mean {s.get('mean', float('nan')):.4g} {s.get('unit', unit)}"
                       f"{_scale_text(images.get(name))}"
                 for name, s in statistics.get("per_image", {}).items()}
    sections.append("<h2>Per image</h2>" + _table(per_image))
    sections.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(run_info, indent=1, default=str)[:20000]) + "</pre>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    write_text(path, page)
    return path
