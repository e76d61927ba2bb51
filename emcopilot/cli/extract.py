"""``emcopilot extract RECIPE --input PATH... --out DIR``: run the recipe's prior extractor only.

Writes to ``--out``: ``particles.csv`` and ``particles.parquet`` (the particle table, docs/particle-table.md),
``masks/<image>.tif``, ``prior.json`` (the :class:`~emcopilot.morphology.MorphologyPrior`
fitted to everything found), ``run.json`` (recipe, extractor, per-image pixel size and
its source, counts, timings) and, when inputs failed, ``errors.csv``. Images
without calibration get an estimated pixel size (logged, recorded in ``run.json``)
unless ``--pixel-size-nm`` is given. Exit status 3 when some inputs failed.
"""
from __future__ import annotations

import time
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


def _pixel_size(micrograph, instances) -> tuple[float | None, str]:
    if micrograph.pixel_size_nm is not None:
        return micrograph.pixel_size_nm, micrograph.metadata.get("pixel_size_source", "file")
    estimate = instances.metadata.get("pixel_size_nm_estimate")
    return (float(estimate), "estimated") if estimate is not None else (None, "unknown")


def run(args) -> int:
    import logging

    from tqdm import tqdm

    from ..errors import EmcopilotError, InputError
    from ..io import expand_inputs, read_micrographs
    from ..measure import mask_file_name, write_outputs
    from ..morphology import MorphologyPrior
    from ..recipe import load_recipe
    from ..rundir import (RunDirectory, environment, input_sha256s, refuse_run_folder, remove_stale_outputs,
                          write_errors, write_json, write_text)

    log = logging.getLogger("emcopilot.extract")
    started = time.perf_counter()
    recipe = load_recipe(args.recipe)
    extractor = recipe.prior_extractor.create(recipe.sample)
    read_errors: list = []
    # listed once: a folder's unreadable files are reported once
    paths = expand_inputs(args.input, recursive=args.recursive)
    pixel_size_nm, calibration = read_calibration_arguments(args, paths)
    micrographs = read_micrographs(paths, pixel_size_nm=pixel_size_nm, errors=read_errors, calibration=calibration)
    if not micrographs and not read_errors:
        raise InputError(f"--input {' '.join(args.input)}: no supported image files found")
    refuse_run_folder(args.out, "extract")
    with RunDirectory(args.out):  # one command at a time per --out
        errors = [(str(path), message) for path, message in read_errors]
        done, found, images = [], [], {}
        for micrograph in tqdm(micrographs, desc=f"extract ({recipe.prior_extractor.plugin})",
                               disable=args.no_progress, leave=False):
            image_started = time.perf_counter()
            try:
                instances = extractor.extract(micrograph)
            except EmcopilotError as error:
                errors.append((micrograph.name, str(error)))
                continue
            pixel_size_nm, source = _pixel_size(micrograph, instances)
            if instances.count == 0:
                log.warning("%s: the %s extractor found nothing", micrograph.name, recipe.prior_extractor.plugin)
            done.append(micrograph)
            found.append(instances)
            images[micrograph.name] = {
                "shape": list(micrograph.shape), "pixel_size_nm": pixel_size_nm, "pixel_size_source": source,
                "objects": instances.count, "seconds": time.perf_counter() - image_started,
                "extractor_report": {k: v for k, v in instances.metadata.items() if isinstance(v, (int, float, str))}}
        pixel_sizes = [images[m.name]["pixel_size_nm"] for m in done]
        table = write_outputs(args.out, done, found, pixel_sizes)
        if done:
            prior = MorphologyPrior.fit(found, done, sample=recipe.sample)
            write_text(args.out / "prior.json", prior.to_json())
        if errors:
            write_errors(args.out / "errors.csv", errors)
        elif (args.out / "errors.csv").exists():  # an earlier extract's failures are not this one's
            (args.out / "errors.csv").unlink()
        remove_stale_outputs(args.out, [mask_file_name(m.name) for m in done])
        if not done and (args.out / "prior.json").exists():
            (args.out / "prior.json").unlink()
        write_json(args.out / "run.json", {
            "command": "extract", "recipe": recipe.as_dict(),
            "prior_extractor": {"plugin": recipe.prior_extractor.plugin, "params": recipe.prior_extractor.params},
            "inputs": input_sha256s(path for path in paths if path.is_file()),
            "images": images, "errors": [{"input": name, "error": message} for name, message in errors],
            "timings": {"total_s": time.perf_counter() - started}, "environment": environment()})
        print(f"{len(done)} micrograph(s), {len(table)} objects ({recipe.prior_extractor.plugin}) -> "
              f"{args.out / 'particles.csv'}")
        if errors:
            for name, message in errors:
                print(f"failed: {message}" if message.startswith(str(name)) else f"failed: {name}: {message}")
            return 3
        return 0
