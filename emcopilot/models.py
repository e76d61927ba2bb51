"""Saved models: a segmenter rebuilt from its folder (``model/`` of a run, or a segmenter's ``save``).

The folder holds ``config.json`` (the segmenter plugin, its parameters and the
recipe's ``sample:`` block) and the weights as safetensors; :func:`load_model`
rebuilds the segmenter through the plugin registry and loads them. Every problem
with the folder is a :class:`~emcopilot.errors.CheckpointError` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def load_model(model_dir: Path, device: str | None = None, *, params: Mapping[str, Any] | None = None) -> Any:
    """The segmenter described by ``model_dir/config.json``, with its weights loaded.

    ``params`` override the saved parameters (the plugin checks them as it would a recipe's).
    """
    from .checkpoint import PICKLE_SUFFIXES
    from .errors import CheckpointError, InputError
    from .params import ParamsProblem
    from .plugins import get_registry
    from .recipe import Sample

    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        pickles = [model_dir] if model_dir.suffix.lower() in PICKLE_SUFFIXES else (
            sorted(p for p in model_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if model_dir.is_dir() else [])
        hint = (f"; pickle files ({', '.join(p.name for p in pickles)}) are refused because loading them can run "
                "arbitrary code" if pickles else "")
        raise CheckpointError(f"--model {model_dir}: no config.json (a model folder is the model/ of a run "
                              f"or the folder a segmenter was saved to){hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON: {error}") from None
    choice = config.get("segmenter") if isinstance(config, dict) else None
    if not isinstance(choice, dict) or not isinstance(choice.get("plugin"), str):
        raise CheckpointError(f"{path}: does not name a segmenter ({{\"segmenter\": {{\"plugin\": NAME, "
                              f"\"params\": {{...}}}}}} is missing)")
    saved = choice.get("params") or {}
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: segmenter.params must be a mapping, got {type(saved).__name__}")
    overrides = dict(params or {})
    merged = {**saved, **overrides}
    if device is not None:
        merged["device"] = device
    if "sample" in config and not isinstance(config["sample"], dict):
        raise CheckpointError(f"{path}: sample must be a mapping like a recipe's sample block, got "
                              f"{type(config['sample']).__name__}")
    try:
        sample = Sample.from_dict(config["sample"], where=str(path)) if "sample" in config else None
    except ParamsProblem as problem:
        raise CheckpointError(f"{path}: sample.{problem.key}: {problem.reason}") from None
    try:
        segmenter = get_registry().get("segmenter", choice["plugin"]).create(merged, sample)
    except ParamsProblem as problem:
        where = f"--param {problem.key}" if problem.key in overrides else f"{path}: {problem.key}"
        raise InputError(f"{where}: {problem.reason}") from None
    segmenter.load(Path(model_dir))
    return segmenter
