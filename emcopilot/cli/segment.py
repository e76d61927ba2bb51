"""``emcopilot segment --model DIR --input PATH... --out DIR``: apply a trained segmenter.

The model folder (``model/`` of a run, or a segmenter's ``save``) holds a
``config.json`` naming the segmenter plugin, its params and the recipe's
``sample:`` block; the segmenter is rebuilt from it and loads its weights.
Writes the DESIGN §6 outputs: ``particles.csv``/``.parquet``, ``masks/``,
``run.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "segment", help="segment micrographs with a trained model folder",
        description="Rebuild the segmenter named in MODEL/config.json, load its weights, segment every input "
                    "and write particles.csv, particles.parquet, masks/ and run.json to --out.")
    parser.add_argument("--model", required=True, type=Path, help="model folder (config.json + weights)")
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="PATH", help="files or folders")
    parser.add_argument("--out", "-o", required=True, type=Path, help="output directory")
    parser.add_argument("--pixel-size-nm", type=float, help="pixel size for files without calibration (overrides)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: the model's setting)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def load_model(model_dir: Path, device: str | None = None) -> Any:
    """The segmenter described by ``model_dir/config.json``, with its weights loaded."""
    from ..checkpoint import PICKLE_SUFFIXES
    from ..errors import CheckpointError
    from ..plugins import get_registry
    from ..recipe import Sample

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
    params = dict(choice.get("params") or {})
    if device is not None:
        params["device"] = device
    sample = Sample.from_dict(config["sample"]) if isinstance(config.get("sample"), dict) else None
    segmenter = get_registry().get("segmenter", choice["plugin"]).create(params, sample)
    segmenter.load(Path(model_dir))
    return segmenter


def segment_micrographs(segmenter: Any, micrographs: list, out: Path, progress: bool = True):
    """Predict, measure and write masks; returns ``(tables, errors, seconds per image)``."""
    from tqdm import tqdm

    from ..errors import EmcopilotError
    from ..measure import mask_file_name, particle_table
    from ..rundir import write_tiff

    tables, errors, timings = [], [], {}
    for micrograph in tqdm(micrographs, desc="segment", disable=not progress, leave=False):
        started = time.perf_counter()
        try:
            instances = segmenter.predict(micrograph)
        except EmcopilotError as error:
            errors.append((micrograph.name, str(error)))
            continue
        labels = instances.labels if instances.labels is not None else _empty_labels(micrograph)
        write_tiff(out / "masks" / mask_file_name(micrograph.name), labels.astype("int32"))
        tables.append(particle_table(instances, micrograph))
        timings[micrograph.name] = time.perf_counter() - started
    return tables, errors, timings


def _empty_labels(micrograph):
    import numpy as np
    return np.zeros(micrograph.shape, np.int32)


def run(args) -> int:
    from ..errors import InputError
    from ..io import expand_inputs, read_micrographs
    from ..measure import write_table
    from ..rundir import environment, sha256_file, write_json

    if args.pixel_size_nm is not None and not args.pixel_size_nm > 0:
        raise InputError(f"--pixel-size-nm must be positive, got {args.pixel_size_nm}")
    started = time.perf_counter()
    segmenter = load_model(args.model, args.device)
    read_errors: list = []
    micrographs = read_micrographs(args.input, pixel_size_nm=args.pixel_size_nm, errors=read_errors)
    if not micrographs and not read_errors:
        raise InputError(f"--input {' '.join(args.input)}: no supported image files found")
    args.out.mkdir(parents=True, exist_ok=True)
    tables, errors, timings = segment_micrographs(segmenter, micrographs, args.out, not args.no_progress)
    errors = [(str(path), message) for path, message in read_errors] + errors
    table = write_table(args.out, tables)
    megapixels = sum(m.data.size for m in micrographs if m.name in timings) / 1e6
    seconds = sum(timings.values())
    write_json(args.out / "run.json", {
        "command": "segment", "model": str(args.model),
        "model_config": json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8")),
        "inputs": {str(path): sha256_file(path) for path in expand_inputs(args.input) if path.is_file()},
        "images": {m.name: {"shape": list(m.shape), "pixel_size_nm": m.pixel_size_nm,
                            "seconds": timings.get(m.name)} for m in micrographs},
        "errors": [{"input": name, "error": message} for name, message in errors],
        "timings": {"total_s": time.perf_counter() - started, "segment_s": seconds,
                    "megapixels_per_s": megapixels / seconds if seconds else None},
        "environment": environment()})
    print(f"{len(timings)} micrograph(s), {len(table)} objects -> {args.out / 'particles.csv'}")
    if errors:
        for name, message in errors:
            print(f"failed: {name}: {message}")
        return 3
    return 0
