"""How exactly are single atoms placed? Sub-pixel positions on frames with known atoms.

Frames are rendered by the physics engine for the ``single-atom-catalyst-haadf``
recipe (layout sampler, ``physical`` generator, ``haadf-stem`` adapter at its
defaults: probe, detector, shot noise) at the recipe's working pixel size and at
the ends and middle of its dose range. Scan jitter, drift, fly-back and
radiation damage are switched off so that the drawn atom positions are the
truth. The recipe's own atom finder (the ``atoms`` prior extractor) finds the
atoms; each found atom is matched to the nearest true one within 0.1 nm, and the
benchmark reports the rms position error (pixels) of

- ``whole_pixel``: the finder's peak pixel;
- ``centre_of_mass``: the intensity-weighted centre of the 3x3 pixels round it;
- ``gaussian``: the 2-D Gaussian fitted by :func:`emcopilot.analysis.atom_fit.fit_gaussians`,
  which is what the particle table reports;

with the share of fits that converged, the fitted width against the drawn
one, and the fit's time per 1000 atoms.

With ``--model`` (a trained ``single-atom-catalyst-haadf`` model folder, e.g. a
run's ``model/``) it also segments the acstem-dev images with that model twice,
atoms as fitted and as the heatmap found them (``atom_position_fit=false``), and
scores both against the clicked atoms (within 0.1 nm) with ``emcopilot evaluate``:
the fit must not cost detections.

    python benchmarks/atom_positions.py [DATA] [--frames 4] [--side-px 512] [--model RUN/model] [--out atom_positions.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from emcopilot.analysis.atom_fit import FWHM_PER_SIGMA, fit_gaussians  # noqa: E402
from emcopilot.core.interfaces import Micrograph  # noqa: E402
from emcopilot.specimen.layout import LayoutSpec, sample_layout  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import load_recipe  # noqa: E402

RECIPE = "single-atom-catalyst-haadf"
MATCH_NM = 0.1
STILL = {"randomize": False, "jitter_rms_nm": 0.0, "drift_nm_per_min": 0.0, "flyback_amplitude_nm": 0.0,
         "damage_critical_dose_e_per_A2": 1e12}


def centre_of_mass(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The intensity-weighted centre of the 3x3 pixels round each point (background: the window minimum)."""
    padded = np.pad(image, 1, mode="edge")
    refined = []
    for row, col in np.round(points).astype(int):
        window = padded[row:row + 3, col:col + 3]
        window = window - window.min()
        total = window.sum()
        if total <= 0:
            refined.append((row, col))
            continue
        offsets = np.array([-1.0, 0.0, 1.0])
        refined.append((row + (window.sum(1) * offsets).sum() / total, col + (window.sum(0) * offsets).sum() / total))
    return np.array(refined, float).reshape(-1, 2)


def frame(dose: float, side_px: int, seed: int):
    recipe = load_recipe(RECIPE)
    registry = get_registry()
    pixel_nm = float(recipe.sample.working_pixel_size_nm)
    rng = np.random.default_rng(seed)
    layout = sample_layout(LayoutSpec.from_sample(recipe.sample), (side_px, side_px), pixel_nm, rng)
    [clean] = registry.get("generator", "physical").create({}, recipe.sample).generate([layout], rng)
    adapter = registry.get("physics_adapter", "haadf-stem").create({**STILL, "dose_e_per_A2": dose}, recipe.sample)
    image = adapter.apply(clean, pixel_nm, rng)
    return recipe, image, np.asarray(layout.atoms, float), pixel_nm, adapter


def measure(dose: float, side_px: int, seed: int) -> dict:
    from scipy.spatial import cKDTree

    recipe, image, truth, pixel_nm, adapter = frame(dose, side_px, seed)
    finder = get_registry().get("prior_extractor", "atoms").create(dict(recipe.prior_extractor.params), recipe.sample)
    found = finder.extract(Micrograph(image, pixel_size_nm=pixel_nm, name=f"dose{dose:g}-{seed}"))
    peaks = np.asarray(found.points, float).reshape(-1, 2)
    fwhm_px = float(found.metadata["atom_fwhm_px"])
    started = time.perf_counter()
    fit = fit_gaussians(image, peaks, fwhm_px / FWHM_PER_SIGMA)
    fit_s = time.perf_counter() - started
    distance, nearest = cKDTree(truth).query(peaks) if len(truth) else (np.full(len(peaks), np.inf), None)
    matched = distance <= MATCH_NM / pixel_nm
    estimates = {"whole_pixel": np.round(peaks), "centre_of_mass": centre_of_mass(image, peaks), "gaussian": fit.points}
    errors = {name: np.hypot(*(points[matched] - truth[nearest[matched]]).T) for name, points in estimates.items()}
    drawn_fwhm_nm = math.hypot(adapter.params["psf_fwhm_nm"], 2 * 0.139 / 2.0)  # probe (x) atom, roughly
    return {"dose_e_per_A2": dose, "seed": seed, "atoms_true": int(len(truth)), "atoms_found": int(len(peaks)),
            "matched": int(matched.sum()), "converged_share": float(fit.converged[matched].mean()) if matched.any()
            else None, "rms_px": {name: float(np.sqrt(np.mean(e ** 2))) if len(e) else None
                                  for name, e in errors.items()},
            "fitted_fwhm_nm_median": float(np.nanmedian(fit.sigma_px[matched]) * FWHM_PER_SIGMA * pixel_nm)
            if matched.any() else None, "rough_drawn_fwhm_nm": drawn_fwhm_nm,
            "fit_s_per_1000_atoms": 1000 * fit_s / max(1, len(peaks)), "pixel_size_nm": pixel_nm}


def acstem_scores(data: Path, model: Path, work: Path) -> dict:
    """F1 on acstem-dev of ``model`` with atoms fitted and as detected."""
    import subprocess

    from closed_loop import evaluate_args, select_images

    images = [str(p) for p in select_images(data, "acstem")]
    scores = {}
    for name, fit in (("gaussian", "true"), ("detected", "false")):
        out = work / name
        command = [sys.executable, "-m", "emcopilot", "segment", "--model", str(model), "--input", *images,
                   "--out", str(out), "--param", f"atom_position_fit={fit}", "--no-progress"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "emcopilot", *evaluate_args(data, "acstem", out, work / f"{name}.json")],
                       check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((work / f"{name}.json").read_text())["pooled"]
        scores[name] = {key: summary[key] for key in ("f1", "precision", "recall") if key in summary}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", type=Path, help="a trained single-atom model folder: also score acstem-dev")
    parser.add_argument("--work", type=Path, help="keep the segment runs here (default: a temporary folder)")
    parser.add_argument("--frames", type=int, default=4, help="frames per dose")
    parser.add_argument("--side-px", type=int, default=512)
    parser.add_argument("--out", help="JSON report")
    args = parser.parse_args(argv)
    recipe = load_recipe(RECIPE)
    low, high = recipe.sample.dose_e_per_A2
    doses = (low, math.sqrt(low * high), high)
    rows = [measure(dose, args.side_px, seed) for dose in doses for seed in range(args.frames)]
    pooled = {}
    for dose in doses:
        mine = [r for r in rows if r["dose_e_per_A2"] == dose]
        weights = np.array([r["matched"] for r in mine], float)
        pooled[f"{dose:g}"] = {
            "matched": int(weights.sum()),
            "converged_share": float(np.average([r["converged_share"] or 0 for r in mine], weights=weights)),
            "rms_px": {name: float(np.sqrt(np.average([r["rms_px"][name] ** 2 for r in mine], weights=weights)))
                       for name in mine[0]["rms_px"]},
            "fit_s_per_1000_atoms": float(np.median([r["fit_s_per_1000_atoms"] for r in mine]))}
    report = {"benchmark": "atom_positions", "recipe": RECIPE, "side_px": args.side_px, "match_nm": MATCH_NM,
              "doses_e_per_A2": list(doses), "pooled_by_dose": pooled, "frames": rows}
    if args.model:
        import tempfile
        with tempfile.TemporaryDirectory() as temporary:
            work = args.work or Path(temporary)
            work.mkdir(parents=True, exist_ok=True)
            report["acstem_dev"] = acstem_scores(Path(args.data), args.model, work)
        print(json.dumps(report["acstem_dev"], indent=2))
    text = json.dumps(report, indent=2)
    print(json.dumps(pooled, indent=2))
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
