"""Throughput of the prior extractors: seconds per 1024 x 1024 micrograph on this machine.

- ``classical``: ardagen-dev ``Cu_silica1.jpg`` (1024², uncalibrated: includes the
  pixel-size estimate) with the nanoparticles-haadf sample;
- ``atoms``: four acstem-dev images tiled 2 x 2 into 1024² (0.0293 nm/px) with
  the single-atom-catalyst-haadf sample;
- ``sam``: the checkpoint given with ``--sam-checkpoint`` (a real vit_b/l/h file),
  else skipped; on the same image as ``classical``.

Usage::

    python benchmarks/priors_throughput.py [DATA] [--repeats 3] [--threads 1] [--sam-checkpoint PATH] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def timed(extractor, micrograph, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        instances = extractor.extract(micrograph)
        times.append(time.perf_counter() - started)
    return {"seconds_per_image": float(np.median(times)), "all_seconds": times, "objects": instances.count,
            "shape": list(micrograph.shape)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default="../shared/data", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads")
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import os
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from emcopilot import Micrograph
    from emcopilot.io.readers import read_micrograph
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe

    registry = get_registry()
    results = {"threads": args.threads}
    particles = read_micrograph(args.data / "ardagen-dev" / "images" / "Cu_silica1.jpg")[0]
    haadf = load_recipe("nanoparticles-haadf").sample
    results["classical"] = timed(registry.get("prior_extractor", "classical").create({}, haadf), particles, args.repeats)
    tiles = [read_micrograph(p)[0] for p in sorted((args.data / "acstem-dev" / "images").glob("*.tif"))[:4]]
    mosaic = np.block([[tiles[0].data, tiles[1].data], [tiles[2].data, tiles[3].data]])
    atoms_image = Micrograph(mosaic, pixel_size_nm=tiles[0].pixel_size_nm, name="acstem-2x2")
    atoms_sample = load_recipe("single-atom-catalyst-haadf").sample
    results["atoms"] = timed(registry.get("prior_extractor", "atoms").create({}, atoms_sample), atoms_image,
                             args.repeats)
    if args.sam_checkpoint:
        import torch
        torch.set_num_threads(args.threads)
        sam = registry.get("prior_extractor", "sam").create({"checkpoint": args.sam_checkpoint}, haadf)
        results["sam"] = {**timed(sam, particles, 1), "model_type": sam.arch["model_type"], "device": sam.device}
    for name in ("classical", "atoms", "sam"):
        if name in results:
            print(f"{name:10s} {results[name]['seconds_per_image']:.2f} s per {results[name]['shape']} image")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
