"""``emcopilot extract RECIPE --input PATH... --out DIR``: run the recipe's prior extractor only.

It is ``emcopilot run`` stopped after its ``extract`` and ``prior`` stages (kept in
``--out/stages/``, so a ``run`` of the same recipe and inputs into the same folder goes on
from them). Writes to ``--out``: ``particles.csv`` and ``particles.parquet`` (the particle
table, docs/particle-table.md), ``masks/<image>.tif``, ``prior.json`` (the
:class:`~emcopilot.specimen.morphology.MorphologyPrior` fitted to everything found),
``run.json`` (recipe, extractor, per-image pixel size and its source, counts, timings) and
``errors.csv``. Images without calibration get an estimated pixel size (logged, recorded
in ``run.json``) unless ``--pixel-size-nm`` is given. Exit status 3 when some inputs failed.
"""
from __future__ import annotations

from pathlib import Path

from . import add_calibration_arguments, add_input_arguments, read_calibration_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "extract", help="run a recipe's prior extractor (masks, particle table, morphology prior)",
        description="Run only the recipe's prior extractor on the inputs and write particles.csv, "
                    "particles.parquet, masks/, prior.json and run.json to --out.")
    parser.add_argument("recipe", help="built-in recipe name or path to a YAML file")
    add_input_arguments(parser)
    parser.add_argument("--out", "-o", required=True, type=Path, help="output directory")
    add_calibration_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args) -> int:
    from ..pipeline.api import extract
    from ..core.errors import InputError
    from ..io.readers import expand_inputs

    # listed once: a folder's unreadable files are reported once
    paths = expand_inputs(args.input, recursive=args.recursive)
    if not paths:
        raise InputError(f"--input {' '.join(args.input)}: no supported image files found")
    pixel_size_nm, calibration = read_calibration_arguments(args, paths)
    result = extract(args.recipe, paths, args.out, pixel_size_nm=pixel_size_nm, calibration=calibration,
                     scale_bar_nm=args.scale_bar_nm, progress=not args.no_progress)
    print(f"{len(result.images)} micrograph(s), {len(result.table)} objects "
          f"({result.run_info['plugins']['prior_extractor']['name']}) -> {args.out / 'particles.csv'}")
    for name, message in result.errors:
        print(f"failed: {message}" if message.startswith(str(name)) else f"failed: {name}: {message}")
    return 3 if result.errors else 0
