"""``emcopilot segment --model DIR --input PATH... --out DIR``: apply a trained segmenter.

The model folder (``model/`` of a run, or a segmenter's ``save``) holds the
manifest ``model.json`` naming the segmenter plugin, its params and the recipe's
``sample:`` block (:mod:`emcopilot.pipeline.models`); the segmenter is rebuilt from it
(``--param NAME=VALUE`` overrides one of its saved parameters for this batch)
and loads its weights.
Writes the particle table and masks (docs/particle-table.md): ``particles.csv``/``.parquet``, ``masks/``,
``run.json``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from . import add_calibration_arguments, add_input_arguments, read_calibration_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "segment", help="segment micrographs with a trained model folder",
        description="Rebuild the segmenter named in MODEL/model.json, load its weights, segment every input "
                    "and write particles.csv, particles.parquet, masks/ and run.json to --out.")
    parser.add_argument("--model", required=True, type=Path, help="model folder (model.json, the plugin's config.json and weights)")
    add_input_arguments(parser)
    parser.add_argument("--out", "-o", required=True, type=Path, help="output directory")
    add_calibration_arguments(parser)
    parser.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: the model's setting)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override one of the segmenter's parameters for this batch (repeatable; VALUE is "
                             "read as YAML), e.g. --param test_time_flips=1 (about 3x faster, a little less accurate) "
                             "or --param peak_threshold=0.5")
    parser.add_argument("--workers", type=int, help="run on a local Dask cluster of N worker processes")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on an existing dask.distributed cluster (e.g. tcp://host:8786)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=[1, 99]"]`` -> ``{"a": 1, "b": [1, 99]}`` (values read with the safe YAML loader)."""
    import yaml
    from ..core.errors import InputError

    params: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise InputError(f"--param {item!r}: expected NAME=VALUE, e.g. --param test_time_flips=1")
        try:
            params[name] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise InputError(f"--param {item!r}: the value is not valid YAML: {error}") from None
    return params


def run(args) -> int:
    from ..pipeline.api import segment
    from ..pipeline.batch import cached_model
    from ..core.errors import InputError
    from ..io.readers import expand_inputs

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    started = time.perf_counter()
    overrides = parse_params(args.param)
    cached_model(str(args.model), args.device, overrides)  # a model that cannot load stops here, before any work
    paths = expand_inputs(args.input, recursive=args.recursive)
    if not paths:
        raise InputError(f"--input {' '.join(args.input)}: no supported image files found")
    pixel_size_nm, calibration = read_calibration_arguments(args, paths)
    result = segment(args.model, paths, args.out, pixel_size_nm=pixel_size_nm, calibration=calibration,
                     device=args.device, params=overrides, workers=args.workers, scheduler=args.scheduler,
                     progress=not args.no_progress, scale_bar_nm=args.scale_bar_nm)
    seconds = time.perf_counter() - started
    count = len(result.images)
    print(f"{count} micrograph(s), {len(result.table)} objects -> {args.out / 'particles.csv'} "
          f"({count / seconds:.2f} images/s)")
    if result.errors:
        print(f"{len(result.errors)} input(s) failed; listed in {args.out / 'errors.csv'}")
        for name, message in result.errors[:10]:
            print(f"  {name}: {message}")
        return 3
    return 0
