"""Batch robustness: `emcopilot segment` over N small micrographs of which a share are corrupt.

Writes calibrated TIFFs (rendered by the physics engine), corrupts a fraction of them in
several ways (zero bytes, truncated, random bytes, NaN pixels), runs `emcopilot segment`
as a user would (a subprocess), and reports the wall time, images measured, failures
listed in errors.csv and the exit status. Usage:

    python benchmarks/batch_robustness.py --images 1000 --corrupt 0.05 [--workers 2] [--model DIR]
    python benchmarks/batch_robustness.py --images 200 --side-px 1024 --corrupt 0 --scheduler local --workers 2

``--scheduler local`` starts a dask.distributed ``LocalCluster`` of ``--workers`` processes (one
thread each) first and hands its address to ``segment --scheduler`` (the cluster's start-up is
not timed: it stands for a cluster that is already running).

Without --model the `classical` segmenter of the nanoparticles-haadf recipe is used.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


#: names a file system allows and a measurement tool must survive (spreadsheet formulas, mathtext,
#: spaces and quotes, bytes that are not UTF-8)
HOSTILE_NAMES = [b"=HYPERLINK(x) %d.tif", b"a$\\frac$ %d.tif", b"caf\xe9 %d.tif", b"+cmd %d.tif",
                 b"'quote\" %d.tif", b"@at %d.tif", b"  lead %d.tif", b"new\nline %d.tif"]


def make_inputs(folder: Path, count: int, corrupt: float, side_px: int, seed: int,
                duplicates: float = 0.0, hostile: float = 0.0) -> tuple[list[str], int]:
    from emcopilot.pipeline.demo import write_calibrated_tiff
    from emcopilot.specimen.layout import LayoutSpec, sample_layout
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe
    recipe = load_recipe("nanoparticles-haadf")
    registry = get_registry()
    generator = registry.get("generator", "physical").create({}, recipe.sample)
    adapter = registry.get("physics_adapter", "haadf-stem").create({}, recipe.sample)
    spec = LayoutSpec.from_sample(recipe.sample)
    rng = np.random.default_rng(seed)
    pixel_size_nm = recipe.sample.working_pixel_size_nm
    templates = []
    for _ in range(8):  # render a few scenes, reuse them with noise (rendering is not what is measured)
        layout = sample_layout(spec, (side_px, side_px), pixel_size_nm, rng)
        templates.append(adapter.apply(generator.generate([layout], rng)[0], pixel_size_nm, rng, layout=layout))
    order = rng.permutation(count)
    n_bad, n_dup, n_hostile = (int(round(count * share)) for share in (corrupt, duplicates, hostile))
    bad = set(order[:n_bad].tolist())
    dup = set(order[n_bad:n_bad + n_dup].tolist())
    odd = set(order[n_bad + n_dup:n_bad + n_dup + n_hostile].tolist())
    kinds = ["zero-bytes", "truncated", "random-bytes", "nan-pixels"]
    corrupted = []
    for index in range(count):
        path = folder / f"img{index:05d}.tif"
        if index in dup:  # the base name of another input, in another folder
            (folder / "other").mkdir(exist_ok=True)
            path = folder / "other" / f"img{(index + 1) % count:05d}.tif"
        elif index in odd:
            path = Path(os.fsdecode(os.fsencode(folder) + b"/" + HOSTILE_NAMES[index % len(HOSTILE_NAMES)] % index))
        image = templates[index % len(templates)] * rng.uniform(0.9, 1.1)
        write_calibrated_tiff(path, image, pixel_size_nm)
        if index in bad:
            kind = kinds[len(corrupted) % len(kinds)]
            if kind == "zero-bytes":
                path.write_bytes(b"")
            elif kind == "truncated":
                path.write_bytes(path.read_bytes()[:200])
            elif kind == "random-bytes":
                path.write_bytes(rng.bytes(4096))
            else:
                image = image.copy()
                image[5, 5] = np.nan
                write_calibrated_tiff(path, image, pixel_size_nm)
            corrupted.append(path.name)
    return corrupted, count - len(corrupted)


def classical_model(folder: Path) -> Path:
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe
    recipe = load_recipe("nanoparticles-haadf")
    segmenter = get_registry().get("segmenter", "classical").create({}, recipe.sample)
    segmenter.save(folder / "model")
    return folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--corrupt", type=float, default=0.05)
    parser.add_argument("--side-px", type=int, default=128)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/batch_robustness"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_robustness.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duplicates", type=float, default=0.0,
                        help="share of inputs named like another one, in a sub-folder (read with --recursive)")
    parser.add_argument("--hostile", type=float, default=0.0,
                        help="share of inputs with names that break naive tools (formulas, $..$, non-UTF-8)")
    parser.add_argument("--scheduler", help="'local' (start a LocalCluster) or the address of a running one")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="passed on to `emcopilot segment --param` (e.g. test_time_flips=1)")
    args = parser.parse_args()
    inputs = args.work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    corrupted, good = make_inputs(inputs, args.images, args.corrupt, args.side_px, args.seed,
                                  args.duplicates, args.hostile)
    model = args.model or classical_model(args.work)
    command = [sys.executable, "-m", "emcopilot", "segment", "--model", str(model), "--input", str(inputs),
               "--out", str(args.work / "run"), "--no-progress", "--recursive"]
    for item in args.param:
        command += ["--param", item]
    cluster = None
    if args.scheduler == "local":
        from dask.distributed import LocalCluster
        cluster = LocalCluster(n_workers=args.workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        command += ["--scheduler", cluster.scheduler_address]
    elif args.scheduler:
        command += ["--scheduler", args.scheduler]
    elif args.workers:
        command += ["--workers", str(args.workers)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if cluster is not None:
        cluster.close()
    if result.returncode not in (0, 3):
        sys.exit(f"segment failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    with open(args.work / "run" / "errors.csv") as handle:
        failed = sorted(Path(row["path"].split(" (")[0]).name for row in csv.DictReader(handle))
    run = json.loads((args.work / "run" / "run.json").read_text())
    import pandas as pd
    table = pd.read_parquet(args.work / "run" / "particles.parquet")
    per_image = table.groupby("image").size() if len(table) else pd.Series(dtype=int)
    masks = len(list((args.work / "run" / "masks").iterdir()))
    report = {"images": args.images, "corrupted": len(corrupted), "good": good, "measured": len(run["images"]),
              "measured_exactly_once": len(run["images"]) == good == masks and len(set(run["images"])) == good,
              "masks": masks, "images_with_rows": int(len(per_image)),
              "duplicates": args.duplicates, "hostile": args.hostile,
              "failures_listed": len(failed), "all_corrupt_listed": sorted(corrupted) == failed,
              "exit_status": result.returncode, "wall_s": round(wall, 1),
              "images_per_s": round(len(run["images"]) / wall, 2), "workers": args.workers,
              "scheduler": args.scheduler, "side_px": args.side_px, "params": args.param,
              "model": str(model), "command": " ".join(command)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
