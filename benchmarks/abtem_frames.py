"""Physics-true STEM frames of Pt atoms and sub-nm clusters on amorphous carbon, made with abTEM.

Two steps, so that the expensive one runs once:

``simulate``: multislice (PRISM) simulations of small periodic cells, noise-free:
  the fraction of the incident beam reaching an HAADF and a BF detector at each
  probe position, with the exact Pt positions. Kinds: ``atoms`` (1-3 Pt adatoms
  per cell), ``clusters`` (one Pt cluster of 3-30 atoms per cell, compact or
  open/raft-like, grown atom by atom at the Pt-Pt distance) and ``carbon``
  (support only, used to thicken the support when staging). Every cell has its
  own amorphous carbon (a jittered grid at 2.0 g/cm^3) of ``--carbon-nm``; the Pt
  sits on the beam-entrance surface.

``stage``: frames a user would record, from the cells, at any dose, source size,
  support thickness and scan noise: ``--mosaic`` x ``--mosaic`` cells side by side
  (a frame of 3 x 3 cells of 3 nm is 9 nm wide), extra support thickness added as
  the HAADF signal of ``carbon`` cells (an incoherent sum, which is what HAADF
  from amorphous carbon is to first order; BF frames keep the simulated
  thickness), Gaussian source blur, Poisson shot noise at the dose, and scan-line
  jitter. Writes calibrated TIFFs (``images/``) and the truth: Pt atoms as points
  (``truth/points/<stem>.csv``, ``X`` = column, ``Y`` = row, pixels), clusters as
  boxes (``truth/boxes/<stem>.txt``, YOLO ``0 cx cy w h``: the box of the cluster's
  atom centres padded by ``--atom-radius-nm``) and everything per cluster in
  ``truth/clusters/<stem>.json`` (atom count, box, atom positions).

Score a run with ``emcopilot evaluate --format yolo`` (clusters, box IoU >= 0.5)
or ``--format points --radius-nm 0.1`` (atoms)::

    pip install -e ".[sim]"
    python benchmarks/abtem_frames.py simulate --kind clusters --cells 18 --out sim/cells
    python benchmarks/abtem_frames.py simulate --kind carbon --cells 2 --carbon-nm 5 --out sim/cells
    python benchmarks/abtem_frames.py stage --cells sim/cells --kind clusters --out sim/clusters-3000 \\
        --dose 3000 --source-fwhm-nm 0.08 --support-nm 10
    emcopilot run subnm-clusters-haadf -i sim/clusters-3000/images -o runs/clusters
    emcopilot evaluate --pred runs/clusters --truth sim/clusters-3000/truth/boxes --format yolo \\
        --images sim/clusters-3000/images

Settings of each simulation (energy, aperture, detector angles, sampling, slice
thickness, PRISM interpolation, seeds, abTEM version) are written beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

PT_PT_NM = 0.2775      # fcc Pt nearest-neighbour distance
CARBON_DENSITY_PER_NM3 = 100.3  # 2.0 g/cm^3 amorphous carbon
CARBON_CELL_SUPPORT_NM = None   # the carbon cells' own thickness is read from their files


# --------------------------------------------------------------------------- structures

def amorphous_carbon(extent_nm: float, thickness_nm: float, z0_nm: float, rng: np.random.Generator) -> np.ndarray:
    """Carbon positions (nm): a cubic grid at the density, each atom displaced by up to 0.3 of the spacing."""
    spacing = CARBON_DENSITY_PER_NM3 ** (-1 / 3)
    n_xy = max(1, round(extent_nm / spacing))
    n_z = max(1, round(thickness_nm / spacing))
    step_xy, step_z = extent_nm / n_xy, thickness_nm / n_z
    grid = np.stack(np.meshgrid(np.arange(n_xy) * step_xy, np.arange(n_xy) * step_xy,
                                np.arange(n_z) * step_z + z0_nm, indexing="ij"), -1).reshape(-1, 3)
    grid += rng.uniform(-0.3, 0.3, grid.shape) * np.array([step_xy, step_xy, step_z])
    grid[:, :2] %= extent_nm
    return grid


def grow_cluster(atoms: int, rng: np.random.Generator, compact: bool) -> np.ndarray:
    """Pt positions (nm, centred in x/y, lowest atom at z = 0) of a cluster grown atom by atom.

    Each new atom goes at the Pt-Pt distance from an existing one and no closer to
    any other; a compact cluster takes the candidate with the most neighbours
    (3-D, close-packed-like), an open one a random candidate in the bottom layer
    (a raft), so both kinds a user sees on a support are covered.
    """
    positions = [np.zeros(3)]
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    while len(positions) < atoms:
        existing = np.array(positions)
        candidates = (existing[:, None, :] + PT_PT_NM * directions[None]).reshape(-1, 3)
        if not compact:
            candidates = candidates[np.abs(candidates[:, 2]) < 0.02]
            candidates[:, 2] = 0.0
        candidates = candidates[candidates[:, 2] >= -1e-6]
        distance = np.linalg.norm(candidates[:, None, :] - existing[None], axis=2)
        free = distance.min(1) > 0.95 * PT_PT_NM
        candidates, distance = candidates[free], distance[free]
        if not len(candidates):
            directions = rng.normal(size=(400, 3))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            continue
        if compact:
            neighbours = (distance < 1.15 * PT_PT_NM).sum(1) - 0.01 * candidates[:, 2]
            best = np.flatnonzero(neighbours >= neighbours.max() - 1e-9)
            positions.append(candidates[rng.choice(best)])
        else:
            positions.append(candidates[rng.integers(len(candidates))])
    positions = np.array(positions)
    positions[:, :2] -= positions[:, :2].mean(0)
    positions[:, 2] -= positions[:, 2].min()
    return positions


def cell_structure(kind: str, index: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Pt positions nm (N, 3), cluster index per Pt atom, carbon positions nm) of one cell."""
    rng = np.random.default_rng([args.seed, index, {"atoms": 1, "clusters": 2, "carbon": 3}[kind]])
    extent, margin = args.extent_nm, 0.7
    if kind == "carbon":
        pt = np.zeros((0, 3))
        cluster = np.zeros(0, int)
    elif kind == "atoms":
        count = int(rng.integers(1, 4))
        xy = []
        while len(xy) < count:
            p = rng.uniform(margin, extent - margin, 2)
            if all(np.linalg.norm(p - q) > 0.5 for q in xy):
                xy.append(p)
        pt = np.column_stack([np.array(xy), np.zeros(count)])
        cluster = np.arange(count)
    else:
        atoms = int(rng.integers(args.cluster_atoms[0], args.cluster_atoms[1] + 1))
        pt = grow_cluster(atoms, rng, compact=bool(rng.random() < 0.6))
        pt[:, :2] += rng.uniform(margin + 0.3, extent - margin - 0.3, 2)
        # the cell is periodic: a cluster must stay clear of its edges, or it wraps round onto the far side
        edge = 0.35
        if np.ptp(pt[:, :2], axis=0).max() > extent - 2 * edge:  # too wide an open cluster: a compact one
            pt = grow_cluster(atoms, rng, compact=True)
            pt[:, :2] += extent / 2
        low, high = pt[:, :2].min(0), pt[:, :2].max(0)
        pt[:, :2] += np.clip(edge - low, 0, None) - np.clip(high - (extent - edge), 0, None)
        cluster = np.zeros(len(pt), int)
    # beam enters at z = 0: Pt on top (0.1 nm down), the support right under the lowest Pt atom
    height = pt[:, 2].max() if len(pt) else 0.0
    pt = pt.copy()
    pt[:, 2] = 0.1 + height - pt[:, 2]
    carbon = amorphous_carbon(extent, args.carbon_nm, 0.1 + height + 0.2, rng)
    return pt, cluster, carbon


def scan_gpts(args: argparse.Namespace) -> int:
    """Probe positions per side: the cell holds a whole number of pixels (the pixel size is then exact)."""
    return max(8, round(args.extent_nm / args.pixel_size_nm))


def simulate_cell(pt: np.ndarray, carbon: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    import abtem
    import ase

    extent_a = args.extent_nm * 10
    depth_a = (carbon[:, 2].max() if len(carbon) else 1.0) * 10 + 2.0
    symbols = ["Pt"] * len(pt) + ["C"] * len(carbon)
    atoms = ase.Atoms(symbols, positions=np.concatenate([pt, carbon]) * 10, cell=[extent_a, extent_a, depth_a],
                      pbc=True)
    abtem.config.set({"device": "cpu"})
    potential = abtem.Potential(atoms, sampling=args.sampling_a, slice_thickness=args.slice_a,
                                projection="infinite", parametrization="lobato")
    smatrix = abtem.SMatrix(potential=potential, energy=args.energy_kv * 1e3, semiangle_cutoff=args.semiangle_mrad,
                            interpolation=args.interpolation)
    scan = abtem.GridScan(start=(0, 0), end=(extent_a, extent_a), gpts=scan_gpts(args))
    detectors = [abtem.AnnularDetector(*args.haadf_mrad), abtem.AnnularDetector(0, args.bf_mrad)]
    haadf, bf = smatrix.scan(scan=scan, detectors=detectors).compute(progress_bar=False)
    # abTEM's scan axes are (x, y); images here are (row = y, column = x)
    return np.asarray(haadf.array, np.float32).T, np.asarray(bf.array, np.float32).T


def cmd_simulate(args: argparse.Namespace) -> int:
    import abtem

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index in range(args.first, args.first + args.cells):
        name = f"{args.kind}-t{args.carbon_nm:g}-{index:03d}"
        if (out / f"{name}.npz").exists():
            continue
        start = time.time()
        pt, cluster, carbon = cell_structure(args.kind, index, args)
        haadf, bf = simulate_cell(pt, carbon, args)
        settings = {"kind": args.kind, "index": index, "seed": args.seed, "extent_nm": args.extent_nm,
                    "carbon_nm": args.carbon_nm, "carbon_atoms": int(len(carbon)), "pt_atoms": int(len(pt)),
                    "pixel_size_nm": args.extent_nm / scan_gpts(args), "energy_kV": args.energy_kv,
                    "semiangle_mrad": args.semiangle_mrad, "haadf_mrad": list(args.haadf_mrad),
                    "bf_mrad": args.bf_mrad, "potential_sampling_A": args.sampling_a, "slice_A": args.slice_a,
                    "method": f"PRISM, interpolation {args.interpolation}", "frozen_phonons": 0,
                    "parametrization": "lobato", "abtem": abtem.__version__, "seconds": round(time.time() - start, 1)}
        np.savez_compressed(out / f"{name}.npz", haadf=haadf, bf=bf, pt_nm=pt, cluster=cluster,
                            settings=json.dumps(settings))
        print(f"{name}: {len(pt)} Pt on {args.carbon_nm:g} nm C, {haadf.shape}, {settings['seconds']} s", flush=True)
    return 0


# --------------------------------------------------------------------------- staging

def _cells(directory: Path, kind: str) -> list[dict]:
    cells = []
    for path in sorted(directory.glob(f"{kind}-*.npz")):
        with np.load(path) as data:
            cells.append({"name": path.stem, "haadf": data["haadf"], "bf": data["bf"], "pt_nm": data["pt_nm"],
                          "cluster": data["cluster"], "settings": json.loads(str(data["settings"]))})
    return cells


def _jitter_rows(image: np.ndarray, sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    if sigma_px <= 0:
        return image
    shifts = rng.normal(0, sigma_px, image.shape[0])
    return np.stack([ndimage.shift(row, shift, mode="wrap", order=1) for row, shift in zip(image, shifts)])


def cmd_stage(args: argparse.Namespace) -> int:
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from emcopilot.pipeline.demo import write_calibrated_tiff

    directory, out = Path(args.cells), Path(args.out)
    cells = _cells(directory, args.kind)
    carbon = _cells(directory, "carbon")
    if len(cells) < args.mosaic ** 2:
        raise SystemExit(f"{directory}: {len(cells)} '{args.kind}' cells, a {args.mosaic}x{args.mosaic} mosaic "
                         f"needs {args.mosaic ** 2}")
    simulated_nm = cells[0]["settings"]["carbon_nm"]
    extra_nm = max(0.0, args.support_nm - simulated_nm) if args.support_nm else 0.0
    if extra_nm and not carbon:
        raise SystemExit(f"{directory}: no 'carbon' cells to thicken the support to {args.support_nm} nm")
    pixel_nm = cells[0]["settings"]["pixel_size_nm"]
    extent_nm = cells[0]["settings"]["extent_nm"]
    rng = np.random.default_rng(args.seed)
    for sub in ("images", "truth/points", "truth/boxes", "truth/clusters"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    order = rng.permutation(len(cells))
    frames = len(cells) // args.mosaic ** 2
    electrons_per_px = args.dose * (pixel_nm * 10) ** 2
    for frame in range(frames):
        chosen = [cells[i] for i in order[frame * args.mosaic ** 2:(frame + 1) * args.mosaic ** 2]]
        side = chosen[0]["haadf"].shape[0]
        rows = []
        atoms, clusters = [], []
        for k, cell in enumerate(chosen):
            r, c = divmod(k, args.mosaic)
            for cid in np.unique(cell["cluster"]):
                member = cell["pt_nm"][cell["cluster"] == cid]
                # positions in pixels of the frame (row = y, column = x); pixel centres at integer positions
                xy_px = member[:, :2] / pixel_nm + np.array([c, r]) * side
                clusters.append(xy_px)
                atoms.extend(xy_px.tolist())
        signal = args.signal
        for r in range(args.mosaic):
            rows.append(np.concatenate([chosen[r * args.mosaic + c][signal] for c in range(args.mosaic)], axis=1))
        image = np.concatenate(rows, axis=0).astype(np.float64)
        if extra_nm and signal == "haadf":
            background = np.zeros_like(image)
            for r in range(args.mosaic):
                for c in range(args.mosaic):
                    remaining = extra_nm
                    while remaining > 1e-6:  # independent slabs (rolled, maybe transposed), the last one in part
                        cell = carbon[rng.integers(len(carbon))]
                        slab_nm = cell["settings"]["carbon_nm"]
                        tile = np.roll(cell["haadf"], tuple(rng.integers(0, side, 2)), axis=(0, 1))
                        if rng.random() < 0.5:
                            tile = tile.T
                        background[r * side:(r + 1) * side, c * side:(c + 1) * side] += \
                            tile * min(1.0, remaining / slab_nm)
                        remaining -= slab_nm
            image += background
        if args.source_fwhm_nm:
            image = ndimage.gaussian_filter(image, args.source_fwhm_nm / pixel_nm / 2.3548, mode="wrap")
        image = _jitter_rows(image, args.jitter_px, rng)
        counts = rng.poisson(np.clip(image, 0, None) * electrons_per_px).astype(np.float32) if args.dose else \
            image.astype(np.float32)
        stem = f"{args.kind}-{signal}-{frame:02d}"
        write_calibrated_tiff(out / "images" / f"{stem}.tif", counts, pixel_nm)
        height, width = counts.shape
        with open(out / "truth/points" / f"{stem}.csv", "w") as handle:
            handle.write("X,Y\n" + "".join(f"{x:.3f},{y:.3f}\n" for x, y in atoms))
        pad = args.atom_radius_nm / pixel_nm
        boxes, records = [], []
        for xy in clusters:
            x0, y0 = xy.min(0) - pad
            x1, y1 = xy.max(0) + pad + 1  # half-open pixel boxes
            boxes.append(f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                         f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n")
            hull_nm2 = ConvexHull(xy * pixel_nm).volume if len(xy) >= 3 and np.linalg.matrix_rank(xy - xy[0]) == 2 \
                else 0.0
            records.append({"atoms": len(xy), "box_px": [float(x0), float(y0), float(x1), float(y1)],
                            "hull_area_nm2": round(float(hull_nm2), 4), "atoms_px": np.round(xy, 3).tolist()})
        (out / "truth/boxes" / f"{stem}.txt").write_text("".join(boxes))
        (out / "truth/clusters" / f"{stem}.json").write_text(json.dumps(records, indent=1))
    staging = {k: v for k, v in vars(args).items() if k != "func"}
    staging.update(frames=frames, pixel_size_nm=pixel_nm, frame_nm=extent_nm * args.mosaic,
                   simulated_support_nm=simulated_nm, added_support_nm=extra_nm,
                   electrons_per_px=electrons_per_px, cells=[c["name"] for c in cells],
                   simulation=cells[0]["settings"])
    (out / "staging.json").write_text(json.dumps(staging, indent=1))
    print(f"{out}: {frames} frames of {args.mosaic}x{args.mosaic} cells, {electrons_per_px:.0f} e/px")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="multislice simulation of periodic cells (slow; once)")
    sim.add_argument("--kind", choices=("atoms", "clusters", "carbon"), required=True)
    sim.add_argument("--cells", type=int, default=9)
    sim.add_argument("--first", type=int, default=0, help="index of the first cell (its seed)")
    sim.add_argument("--out", required=True)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--extent-nm", type=float, default=3.0, help="side of the periodic cell")
    sim.add_argument("--carbon-nm", type=float, default=2.0, help="amorphous carbon thickness simulated")
    sim.add_argument("--cluster-atoms", type=int, nargs=2, default=(3, 30))
    sim.add_argument("--pixel-size-nm", type=float, default=0.036, help="probe step")
    sim.add_argument("--energy-kv", type=float, default=200.0)
    sim.add_argument("--semiangle-mrad", type=float, default=25.0)
    sim.add_argument("--haadf-mrad", type=float, nargs=2, default=(70.0, 160.0))
    sim.add_argument("--bf-mrad", type=float, default=12.0)
    sim.add_argument("--sampling-a", type=float, default=0.05, help="potential sampling (Å)")
    sim.add_argument("--slice-a", type=float, default=2.0, help="slice thickness (Å)")
    sim.add_argument("--interpolation", type=int, default=4, help="PRISM interpolation factor")
    sim.set_defaults(func=cmd_simulate)
    stage = sub.add_parser("stage", help="frames with dose, blur, support and scan noise, plus truth")
    stage.add_argument("--cells", required=True)
    stage.add_argument("--kind", choices=("atoms", "clusters"), required=True)
    stage.add_argument("--out", required=True)
    stage.add_argument("--signal", choices=("haadf", "bf"), default="haadf")
    stage.add_argument("--mosaic", type=int, default=3)
    stage.add_argument("--dose", type=float, default=3000.0, help="e/Å² (0: noise-free)")
    stage.add_argument("--source-fwhm-nm", type=float, default=0.08)
    stage.add_argument("--support-nm", type=float, default=None, help="total support thickness (HAADF)")
    stage.add_argument("--jitter-px", type=float, default=0.0, help="scan-line jitter (standard deviation)")
    stage.add_argument("--atom-radius-nm", type=float, default=0.1, help="padding of a cluster's truth box")
    stage.add_argument("--seed", type=int, default=0)
    stage.set_defaults(func=cmd_stage)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
