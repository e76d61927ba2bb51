"""Saved models: a segmenter's folder, written by :func:`save_model` and rebuilt by :func:`load_model`.

A model folder has two authors. The segmenter plugin writes what only it
understands, through its ``save``: weights as safetensors and its own
``config.json``. emcopilot writes ``model.json``, the manifest: which slot and
plugin made the model (and from which distribution and version), the validated
parameters, the recipe's ``sample:`` block and the working pixel size.
:func:`load_model` rebuilds the segmenter from the manifest through the plugin
registry, so a plugin never decides which plugin loads its folder. A folder
without a manifest (written by a plugin's ``save`` alone) is read from the
``segmenter`` entry of its ``config.json``. Every problem with the folder is a
:class:`~emcopilot.core.errors.CheckpointError` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


MANIFEST_NAME = "model.json"
MANIFEST_FORMAT = "emcopilot-model"
MANIFEST_VERSION = 1


def save_model(segmenter: Any, model_dir: Path, *, plugin: str, params: Mapping[str, Any] | None = None,
               sample: Any = None, registry: Any = None) -> Path:
    """Save ``segmenter`` (made by the segmenter plugin ``plugin`` from ``params`` and ``sample``) to
    ``model_dir``: the plugin's ``save`` writes its weights and config, then the manifest is written."""
    from ..core.files import write_text

    working = getattr(segmenter, "working_pixel_size_nm", None)
    model_dir = Path(model_dir)
    # settings checked and serialised before anything is written
    text = _manifest_text(model_dir, plugin, params, sample, registry,
                          working if isinstance(working, (int, float)) else None)
    segmenter.save(model_dir)
    write_text(model_dir / MANIFEST_NAME, text)
    return model_dir


def write_manifest(model_dir: Path, *, plugin: str, params: Mapping[str, Any] | None = None, sample: Any = None,
                   registry: Any = None, working_pixel_size_nm: float | None = None) -> Path:
    """Write (or rewrite, atomically) the manifest ``model.json`` of the model folder ``model_dir``."""
    from ..core.files import write_text

    model_dir = Path(model_dir)
    write_text(model_dir / MANIFEST_NAME,
               _manifest_text(model_dir, plugin, params, sample, registry, working_pixel_size_nm))
    return model_dir


def _manifest_text(model_dir: Path, plugin: str, params: Mapping[str, Any] | None, sample: Any, registry: Any,
                   working_pixel_size_nm: float | None) -> str:
    """The manifest as JSON text, the parameters validated against the plugin's schema."""
    from .. import __version__
    from ..core.errors import CheckpointError, InputError
    from ..core.params import ParamsProblem, validate_params
    from ..core.plugins import get_registry

    component = (registry or get_registry()).get("segmenter", plugin)
    try:
        resolved = validate_params(component.params, params, owner=f"segmenter {plugin!r}")
    except ParamsProblem as problem:
        raise InputError(f"segmenter {plugin!r}: {problem.key}: {problem.reason}") from None
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "slot": "segmenter",
                "plugin": plugin, "params": resolved,
                "sample": sample.as_dict() if hasattr(sample, "as_dict") else sample,
                "working_pixel_size_nm": None if working_pixel_size_nm is None else float(working_pixel_size_nm),
                "distribution": component.origin.distribution, "version": component.origin.version,
                "emcopilot_version": __version__}
    try:
        return json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{model_dir / MANIFEST_NAME}: the parameters of segmenter {plugin!r} are not "
                              f"JSON-serialisable: {error}") from None


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """What made the model in ``model_dir``: ``{slot, plugin, params, sample, ...}`` from its manifest, or
    from the ``segmenter`` entry of its ``config.json`` where it has none."""
    from ..core.checkpoint import PICKLE_SUFFIXES
    from ..core.errors import CheckpointError

    model_dir = Path(model_dir)
    manifest = model_dir / MANIFEST_NAME
    path = manifest if manifest.is_file() else model_dir / "config.json"
    if not path.is_file():
        pickles = [model_dir] if model_dir.suffix.lower() in PICKLE_SUFFIXES else (
            sorted(p for p in model_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if model_dir.is_dir() else [])
        hint = (f"; pickle files ({', '.join(p.name for p in pickles)}) are refused because loading them can run "
                "arbitrary code" if pickles else "")
        raise CheckpointError(f"--model {model_dir}: no {MANIFEST_NAME} or config.json (a model folder is the "
                              f"model/ of a run or the folder a segmenter was saved to){hint}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: must hold a JSON object, got {type(document).__name__}")
    if path == manifest:
        if document.get("format") != MANIFEST_FORMAT or document.get("slot") != "segmenter":
            raise CheckpointError(f"{path}: not an emcopilot segmenter manifest (format {document.get('format')!r}, "
                                  f"slot {document.get('slot')!r})")
        if not isinstance(document.get("format_version"), int) or document["format_version"] > MANIFEST_VERSION:
            raise CheckpointError(f"{path}: manifest format_version {document.get('format_version')!r} is newer "
                                  f"than this emcopilot reads ({MANIFEST_VERSION}); upgrade emcopilot")
        choice = {"plugin": document.get("plugin"), "params": document.get("params")}
        found = {**document, "sample": document.get("sample")}
    else:
        choice = document.get("segmenter")
        if not isinstance(choice, dict):
            raise CheckpointError(f"{path}: does not name a segmenter ({{\"segmenter\": {{\"plugin\": NAME, "
                                  f"\"params\": {{...}}}}}} is missing)")
        found = {"slot": "segmenter", "sample": document.get("sample")}
    if not isinstance(choice.get("plugin"), str):
        raise CheckpointError(f"{path}: does not name the segmenter plugin that made it")
    params = choice.get("params") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: segmenter params must be a mapping, got {type(params).__name__}")
    if found["sample"] is not None and not isinstance(found["sample"], dict):
        raise CheckpointError(f"{path}: sample must be a mapping like a recipe's sample block, got "
                              f"{type(found['sample']).__name__}")
    return {**found, "plugin": choice["plugin"], "params": params, "path": str(path)}


def load_model(model_dir: Path, device: str | None = None, *, params: Mapping[str, Any] | None = None) -> Any:
    """The segmenter described by the manifest of ``model_dir`` (see :func:`read_manifest`), its weights loaded.

    ``params`` override the saved parameters (the plugin checks them as it would a recipe's).
    """
    import warnings

    from ..core.errors import CheckpointError, InputError
    from ..core.params import ParamsProblem
    from ..core.plugins import get_registry
    from ..core.recipe import Sample

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    path = manifest["path"]
    saved = manifest["params"]
    overrides = dict(params or {})
    merged = {**saved, **overrides}
    if device is not None:
        merged["device"] = device
    try:
        sample = Sample.from_dict(manifest["sample"], where=path) if manifest["sample"] is not None else None
    except ParamsProblem as problem:
        raise CheckpointError(f"{path}: sample.{problem.key}: {problem.reason}") from None
    component = get_registry().get("segmenter", manifest["plugin"])
    made_by = manifest.get("distribution")
    if made_by and component.origin.distribution != made_by:
        warnings.warn(f"{path}: made by segmenter {manifest['plugin']!r} from {made_by}, now loaded by the one "
                      f"from {component.origin.distribution or 'no distribution'}", stacklevel=2)
    try:
        segmenter = component.create(merged, sample)
    except ParamsProblem as problem:
        where = f"--param {problem.key}" if problem.key in overrides else f"{path}: {problem.key}"
        raise InputError(f"{where}: {problem.reason}") from None
    segmenter.load(Path(model_dir))
    return segmenter
