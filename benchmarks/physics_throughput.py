"""Throughput of layout + render + adapter, micrographs per second on one CPU core.

Each synthetic micrograph is drawn as the closed loop draws it: a layout from
a recipe-like spec (``LayoutSpec.from_sample``), a clean image from the
``physical`` generator, and the ``haadf-stem`` (or ``bf-stem``) adapter with
its default conditions (PSF, jitter, drift, flyback, noise; damage with the
layout). Numerical libraries are limited to one thread and the process is
pinned to one core before numpy is imported. Reports wall-clock and CPU
time; on a shared machine the CPU-time rate is the fairer one-core figure.

    python benchmarks/physics_throughput.py [--sizes 512 2048] [--out benchmarks/results/physics_throughput.json]
"""
from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from emcopilot.specimen.layout import LayoutSpec, sample_layout  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402

CASES = {
    # name: (sample block, pixel size nm/px, adapter)
    "nanoparticles-haadf": ({"kind": "particles", "diameter_nm": [2.0, 8.0]}, 0.1, "haadf-stem"),
    "nanoparticles-bf": ({"kind": "particles", "diameter_nm": [2.0, 8.0], "modality": "bf-stem"}, 0.1, "bf-stem"),
    "single-atoms-haadf": ({"kind": "atoms", "diameter_nm": [0.2, 0.3]}, 0.03, "haadf-stem"),
}


def measure(case: str, size: int, count: int, seed: int) -> dict:
    sample_block, pixel_size_nm, adapter_name = CASES[case]
    sample = Sample.from_dict(sample_block)
    registry = get_registry()
    spec = LayoutSpec.from_sample(sample)
    generator = registry.get("generator", "physical").create({}, sample)
    adapter = registry.get("physics_adapter", adapter_name).create({}, sample)
    rng = np.random.default_rng(seed)
    stages = {"layout": 0.0, "render": 0.0, "adapter": 0.0}

    def one() -> None:
        times = [time.process_time()]
        layout = sample_layout(spec, (size, size), pixel_size_nm, rng)
        times.append(time.process_time())
        clean = generator.generate([layout], rng)[0]
        times.append(time.process_time())
        adapter.apply(clean, pixel_size_nm, rng, layout=layout)
        times.append(time.process_time())
        for name, start, stop in zip(stages, times, times[1:]):
            stages[name] += stop - start

    one()  # warm caches (FFT plans, spectra)
    stages = dict.fromkeys(stages, 0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        one()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"case": case, "size_px": size, "pixel_size_nm": pixel_size_nm, "images": count,
            "per_second_wall": count / wall, "per_second_cpu": count / cpu,
            "ms_per_stage_cpu": {name: 1e3 * value / count for name, value in stages.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget per (case, size)")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/physics_throughput.json"))
    args = parser.parse_args(argv)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    results = []
    for case in args.cases:
        for size in args.sizes:
            probe = measure(case, size, 2, args.seed)
            count = max(3, int(args.seconds * probe["per_second_wall"]))
            result = measure(case, size, count, args.seed)
            results.append(result)
            print(f"{case:20s} {size:5d}^2: {result['per_second_wall']:7.2f}/s wall, "
                  f"{result['per_second_cpu']:7.2f}/s cpu, ms/stage {result['ms_per_stage_cpu']}", flush=True)
    report = {"benchmark": "physics_throughput", "python": platform.python_version(),
              "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "pinned_core": args.core, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
