"""Real vs adapted-synthetic micrographs: does the fitted physics look like the microscope?

For every real image of ``acstem-dev`` (HAADF, single Pt atoms, 0.0293 nm/px)
and ``ardagen-dev`` (HAADF and BF nanoparticles, uncalibrated JPEG):

1. ``fit`` the ``haadf-stem`` (or, for PtC1, PtCo1, PtCo3, Pt_carbon1,
   ``bf-stem``) adapter to that image; record every estimate;
2. draw a layout like the image's: single atoms at the annotated density
   (acstem), or particles with the annotated box sizes and count (ardagen;
   uncalibrated, so a nominal 0.1 nm/px is used and all lengths are in px);
3. render it with the ``physical`` generator, its contrast and support
   roughness fitted to the real image with label maps made from the
   annotations (disks at atoms, ellipses in boxes), its support spectrum
   slope set to the adapter's fitted one, and degrade it with the fitted
   adapter (no randomisation);
4. compare real and synthetic: radially averaged power spectra (distance:
   rms of log10 ratio over 0.02-0.5 cycles/px), noise variance-vs-mean
   curves (distance: mean |ln ratio| of variances at the real curve's means),
   intensity histograms (distance: Wasserstein-1 / real std).

The same synthetic layout through the *unfitted* adapter (default
parameters, like a fixed Poisson/Gaussian "domain adapter") is the baseline.

    python benchmarks/physics_realism.py [DATA] [--out benchmarks/results/physics_realism.json] [--png FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import stats
from skimage.draw import disk, ellipse

from emcopilot.io.readers import read_micrograph
from emcopilot.specimen.layout import LayoutSpec, sample_layout
from emcopilot.core.plugins import get_registry
from emcopilot_plugins.physics.estimate import noise_curve

BRIGHT_FIELD = {"PtC1", "PtCo1", "PtCo3", "Pt_carbon1"}
NOMINAL_PIXEL_SIZE_NM = 0.1  # for uncalibrated images: lengths are really in pixels


# --------------------------------------------------------------------------- annotations -> layouts

def acstem_case(path: Path, data_dir: Path):
    micrograph = read_micrograph(path)[0]
    number = path.name.split("_")[0]
    table = np.genfromtxt(data_dir / "acstem-dev" / "labels" / f"{number}_Results.csv", delimiter=",",
                          skip_header=1)
    points = table.reshape(-1, 3)[:, 1:][:, ::-1]  # (row, col)
    area_nm2 = micrograph.data.size * micrograph.pixel_size_nm ** 2
    spec = LayoutSpec("atoms", 0.28, 0.0, number_density_per_nm2=len(points) / area_nm2,
                      atom_min_separation_nm=0.3, clustering=0.3)
    labels = np.zeros(micrograph.shape, np.int32)
    radius_px = spec.atom_radius_nm / micrograph.pixel_size_nm  # the layout's label disks
    for index, (row, col) in enumerate(points, start=1):
        rr, cc = disk((row, col), radius_px, shape=labels.shape)
        labels[rr, cc] = index
    return micrograph, micrograph.pixel_size_nm, spec, labels, "haadf-stem"


def ardagen_case(path: Path, data_dir: Path):
    micrograph = read_micrograph(path)[0]
    height, width = micrograph.shape
    boxes = np.loadtxt(data_dir / "ardagen-dev" / "labels" / f"{path.stem}.txt", ndmin=2)
    boxes = boxes[(boxes[:, 3] > 0) & (boxes[:, 4] > 0)]  # a few annotations are degenerate
    box_w, box_h = boxes[:, 3] * width, boxes[:, 4] * height
    diameters_px = np.sqrt(box_w * box_h)
    spec = LayoutSpec("particles", float(np.median(diameters_px)) * NOMINAL_PIXEL_SIZE_NM,
                      float(np.std(np.log(diameters_px))),
                      number_density_per_nm2=len(boxes) / (micrograph.data.size * NOMINAL_PIXEL_SIZE_NM ** 2),
                      touching_fraction=0.2, clustering=0.3)
    labels = np.zeros(micrograph.shape, np.int32)
    for index, (_, cx, cy, bw, bh) in enumerate(boxes, start=1):
        rr, cc = ellipse(cy * height, cx * width, bh * height / 2, bw * width / 2, shape=labels.shape)
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = index
    modality = "bf-stem" if path.stem in BRIGHT_FIELD else "haadf-stem"
    return micrograph, NOMINAL_PIXEL_SIZE_NM, spec, labels, modality


# --------------------------------------------------------------------------- comparisons

def radial_spectrum(image: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((image - image.mean()) * window))) ** 2 / np.sum(window ** 2)
    ky = np.fft.fftshift(np.fft.fftfreq(image.shape[0]))[:, None]
    kx = np.fft.fftshift(np.fft.fftfreq(image.shape[1]))[None, :]
    k = np.hypot(ky, kx)
    edges = np.geomspace(0.02, 0.5, bins + 1)
    index = np.digitize(k.ravel(), edges) - 1
    valid = (index >= 0) & (index < bins)
    sums = np.bincount(index[valid], power.ravel()[valid], bins)
    counts = np.bincount(index[valid], minlength=bins)
    return np.sqrt(edges[1:] * edges[:-1]), sums / np.maximum(counts, 1)


def distances(real: np.ndarray, synthetic: np.ndarray) -> dict:
    _, real_power = radial_spectrum(real)
    _, synthetic_power = radial_spectrum(synthetic)
    spectrum = float(np.sqrt(np.mean(np.log10(synthetic_power / real_power) ** 2)))
    real_mean, real_var = noise_curve(real.astype(np.float64))
    syn_mean, syn_var = noise_curve(synthetic.astype(np.float64))
    order = np.argsort(syn_mean)
    matched = np.interp(real_mean, syn_mean[order], syn_var[order])
    noise = float(np.mean(np.abs(np.log(np.maximum(matched, 1e-12) / np.maximum(real_var, 1e-12)))))
    histogram = float(stats.wasserstein_distance(real.ravel(), synthetic.ravel()) / real.std())
    return {"spectrum_rms_log10": spectrum, "noise_curve_mean_abs_ln": noise, "histogram_w1_over_std": histogram}


# --------------------------------------------------------------------------- main

def run_case(case, registry, seed: int) -> dict:
    micrograph, pixel_size_nm, spec, labels, modality = case
    rng = np.random.default_rng(seed)
    fitted_adapter = registry.get("physics_adapter", modality).create({"randomize": False})
    started = time.perf_counter()
    fitted = fitted_adapter.fit([micrograph])
    fit_seconds = time.perf_counter() - started
    beta = min(max(fitted["images"][0]["spectrum_beta"], 0.0), 5.0)
    generator = registry.get("generator", "physical").create(
        {"modality": modality, "contrast_spread": 0.0, "support_spectrum_beta": beta})
    generator.fit([labels], [micrograph])
    layout = sample_layout(spec, micrograph.shape, pixel_size_nm, rng)
    clean = generator.render(layout, rng)
    synthetic = fitted_adapter.apply(clean, pixel_size_nm, rng)
    baseline = registry.get("physics_adapter", modality).create({}).apply(clean, pixel_size_nm, rng)
    return {
        "image": micrograph.name, "modality": modality, "shape": list(micrograph.shape),
        "pixel_size_nm": micrograph.pixel_size_nm, "units": fitted["units"], "fit_seconds": fit_seconds,
        "fit": {k: v for k, v in fitted["images"][0].items() if not k.startswith("curve_")},
        "generator_fit": {k: generator.fitted[k] for k in ("object_to_background_ratio", "support_roughness")},
        "fitted_vs_real": distances(micrograph.data, synthetic),
        "unfitted_vs_real": distances(micrograph.data, baseline),
        "_arrays": (micrograph.data, synthetic, baseline),
    }


def summary(results: list[dict]) -> dict:
    out = {}
    for group in ("fitted_vs_real", "unfitted_vs_real"):
        out[group] = {key: float(np.median([r[group][key] for r in results])) for key in results[0][group]}
    return out


def save_png(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    chosen = results[:: max(1, len(results) // 4)][:4]
    figure, axes = plt.subplots(len(chosen), 5, figsize=(22, 4.4 * len(chosen)))
    for row, result in zip(np.atleast_2d(axes), chosen):
        real, synthetic, baseline = result["_arrays"]
        crop = slice(0, min(256, real.shape[0])), slice(0, min(256, real.shape[1]))
        low, high = np.percentile(real, [0.5, 99.5])
        row[0].imshow(real[crop], cmap="gray", vmin=low, vmax=high)
        row[0].set_title(f"real {result['image']}")
        row[1].imshow(synthetic[crop], cmap="gray", vmin=low, vmax=high)
        row[1].set_title("synthetic, fitted adapter")
        for image, label in ((real, "real"), (synthetic, "fitted"), (baseline, "unfitted")):
            k, power = radial_spectrum(image)
            row[2].loglog(k, power, label=label)
            mean, var = noise_curve(image.astype(np.float64))
            row[3].plot(mean, var, "o-", ms=3, label=label)
            row[4].hist(image.ravel(), bins=100, range=(low, high), histtype="step", density=True, label=label)
        row[2].set_title("radial power spectrum")
        row[2].set_xlabel("cycles/px")
        row[3].set_title("noise variance vs mean")
        row[3].set_xlim(low, high)
        row[3].set_yscale("log")
        row[4].set_title("intensity histogram")
        for axis in row[2:]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=70)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default="../shared/data", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/physics_realism.json"))
    parser.add_argument("--png", type=Path, default=None, help="figure (default: next to --out)")
    parser.add_argument("--max-images", type=int, default=None, help="per data set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    registry = get_registry()
    cases = [(acstem_case, p) for p in sorted((args.data / "acstem-dev" / "images").glob("*.tif"))
             [:args.max_images]]
    cases += [(ardagen_case, p) for p in sorted((args.data / "ardagen-dev" / "images").glob("*.jpg"))
              [:args.max_images]]
    results = []
    for index, (make_case, path) in enumerate(cases):
        result = run_case(make_case(path, args.data), registry, args.seed + index)
        results.append(result)
        print(f"{result['image']:42s} {result['modality']:10s} fitted {result['fitted_vs_real']} "
              f"unfitted {result['unfitted_vs_real']}", flush=True)
    report = {
        "benchmark": "physics_realism", "data": str(args.data), "seed": args.seed,
        "python": platform.python_version(), "machine": platform.machine(),
        "summary_median": {
            "acstem-dev": summary([r for r in results if r["units"] == "nm"]),
            "ardagen-dev": summary([r for r in results if r["units"] == "px"]),
        },
        "images": [{k: v for k, v in r.items() if k != "_arrays"} for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    png = args.png or args.out.with_suffix(".png")
    save_png(results, png)
    print(json.dumps(report["summary_median"], indent=2))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
