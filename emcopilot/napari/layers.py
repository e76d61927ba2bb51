"""Results as napari layer data, napari layers as inputs, and corrections saved for the next round.

Every layer made here carries ``metadata["emcopilot"] = {"out": <folder>, "image": <name>,
"role": "image" | "labels" | "points"}``, which is how the corrections widget finds the run
a label layer belongs to and the micrograph it labels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..pipeline.api import Result
from ..pipeline.corrections import CORRECTIONS_DIR
from ..core.errors import EmcopilotError, InputError
from ..core.interfaces import Micrograph

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]


def _scale(pixel_size_nm: float | None) -> dict[str, Any]:
    return {"scale": (pixel_size_nm, pixel_size_nm), "units": ("nm", "nm")} if pixel_size_nm else {}


def input_micrographs(result: Result) -> dict[str, Micrograph]:
    """The result's micrographs by name: its own, else read again from the input files in
    ``run.json`` that can still be read (in-memory inputs cannot be; a missing file is logged)."""
    if result.micrographs is not None:
        return {m.name: m for m in result.micrographs}
    from ..io.inputs import gather
    paths = [Path(entry["path"]) for entry in result.run_info.get("inputs", []) if entry.get("path")]
    found: dict[str, Micrograph] = {}
    if not paths:
        return found
    try:
        inputs = gather(paths)
    except EmcopilotError as error:
        log.warning("%s: cannot list its inputs again: %s", result.out, error)
        return found
    for item in inputs:
        try:
            for micrograph in item.read():
                size, source = _recorded_scale(result, micrograph.name)
                if size is not None and source != "estimated":  # as the run had it (--pixel-size-nm, a table)
                    micrograph.pixel_size_nm = size
                    micrograph.metadata["pixel_size_source"] = source
                found[micrograph.name] = micrograph
        except EmcopilotError as error:
            log.warning("%s: %s", result.out, error)
    return found


def _recorded_scale(result: Result, name: str) -> tuple[float | None, str | None]:
    info = (result.run_info.get("images") or {}).get(name)
    if isinstance(info, dict) and info.get("pixel_size_nm"):
        return float(info["pixel_size_nm"]), info.get("pixel_size_source")
    return None, None


def result_layers(result: Result) -> list[LayerData]:
    """For each micrograph: an image layer (where its pixels can be had), a labels layer with its
    rows of the particle table as features (``index`` = the label value), and points for atoms."""
    micrographs = input_micrographs(result)
    table = result.table
    atoms = (result.run_info.get("recipe") or {}).get("sample", {}).get("kind") == "atoms"
    layers: list[LayerData] = []
    for name in result.images:
        size = result.pixel_size_nm(name)
        tag = {"out": str(result.out), "image": name}
        micrograph = micrographs.get(name)
        if micrograph is not None:
            layers.append((micrograph.data, {"name": name, **_scale(size),
                                             "metadata": {"emcopilot": {**tag, "role": "image"}}}, "image"))
        rows = table[table["image"] == name].reset_index(drop=True) if "image" in table else table
        features = rows.assign(index=rows["id"]) if "id" in rows else pd.DataFrame({"index": []})
        layers.append((result.labels[name], {"name": f"{name} labels", **_scale(size), "features": features,
                                             "opacity": 0.5,
                                             "metadata": {"emcopilot": {**tag, "role": "labels"}}}, "labels"))
        if atoms and len(rows):
            layers.append((rows[["y", "x"]].to_numpy(float), {
                "name": f"{name} atoms", **_scale(size), "features": rows, "size": 4, "face_color": "transparent",
                "border_color": "yellow", "metadata": {"emcopilot": {**tag, "role": "points"}}}, "points"))
    return layers


def layer_pixel_size_nm(layer: Any) -> float | None:
    """The pixel size in nm of an image layer whose scale is in a length unit (else ``None``: uncalibrated)."""
    from ..io.readers import to_nm
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units is not None and len(units) else ""
    scale = float(layer.scale[-1])
    size = to_nm(scale, unit.replace("nanometer", "nm").replace("angstrom", "Å").replace("micrometer", "µm")
                 .replace("picometer", "pm"))
    if size is None or not size > 0 or unit in ("pixel", "px", ""):
        return None
    return size


def layer_micrograph(layer: Any) -> Micrograph:
    """An image layer as a micrograph named after the layer, at the layer's scale where it has one."""
    data = np.asarray(layer.data)
    if data.ndim != 2:
        raise InputError(f"layer {layer.name!r}: a {data.ndim}-D image; choose a 2-D micrograph layer")
    if getattr(layer, "rgb", False):
        raise InputError(f"layer {layer.name!r}: an RGB layer; convert it to grey first")
    return Micrograph(data, pixel_size_nm=layer_pixel_size_nm(layer), name=str(layer.name),
                      metadata={"input": "napari layer"})


def run_labels(layers: Iterable[Any], out: str | Path) -> dict[str, Any]:
    """The labels layers made from the output folder ``out``, by micrograph name."""
    out = str(Path(out))
    found = {}
    for layer in layers:
        tag = getattr(layer, "metadata", {}).get("emcopilot") or {}
        if tag.get("role") == "labels" and str(Path(tag.get("out", ""))) == out:
            found[tag["image"]] = layer
    return found


def save_corrections(layers: Iterable[Any], out: str | Path) -> list[Path]:
    """Write the labels layers of output folder ``out`` that differ from its ``masks/`` (the ones a
    person edited) into ``out/corrections/``, one label TIFF per micrograph named as in ``masks/``;
    returns the files written. An unchanged layer is not a correction: its micrograph keeps the
    prior extractor's priors in the next round (and a correction saved earlier stays)."""
    import tifffile

    from ..analysis.measure import mask_file_name
    from ..core.files import write_label_tiff
    out = Path(out)
    labels = run_labels(layers, out)
    if not labels:
        raise InputError(f"no labels layer of {out} is open; open the folder (File > Open Folder) first")
    written = []
    for name, layer in labels.items():
        data = np.asarray(layer.data)
        mask = out / "masks" / mask_file_name(name)
        if mask.is_file() and np.array_equal(np.asarray(tifffile.imread(mask)), data):
            continue
        path = out / CORRECTIONS_DIR / mask_file_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_label_tiff(path, data, float(layer.scale[-1]) if layer_pixel_size_nm(layer) else None)
        written.append(path)
    if not written and not any((out / CORRECTIONS_DIR).glob("*.tif")):
        raise InputError(f"none of the {len(labels)} labels layer(s) of {out} was changed: delete false objects or "
                         f"paint missed ones (a new label value each) first")
    return written


def recipe_of(result: Result) -> Any:
    """The recipe a run used: its file where it still exists, else the named recipe."""
    from ..core.recipe import load_recipe
    recorded = result.run_info.get("recipe") or {}
    source = recorded.get("source")
    if source and Path(source).is_file():
        return load_recipe(source)
    if not recorded.get("name"):
        raise InputError(f"{result.out}: run.json names no recipe (a segment or extract folder?); choose one")
    return load_recipe(recorded["name"])


def next_round(out: str | Path, images: Sequence[Micrograph] | None = None, *, new_out: str | Path | None = None,
               progress: bool = False, **options: Any) -> Result:
    """Run the recipe of run folder ``out`` again with ``out/corrections/`` as priors, into
    ``new_out`` (default ``<out>-corrected``), on ``images`` (default: its input files again)."""
    from ..pipeline.api import load_run, run
    result = load_run(out)
    if images is None:
        images = list(input_micrographs(result).values())
        if not images:
            raise InputError(f"{out}: none of its input files can be read again; open the images and pass them")
    target = Path(new_out) if new_out is not None else Path(f"{Path(out)}-corrected")
    return run(recipe_of(result), list(images), out=target, priors_from=Path(out) / CORRECTIONS_DIR,
               progress=progress, **options)
