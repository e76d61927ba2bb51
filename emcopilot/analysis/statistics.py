"""Size-distribution statistics of a particle table, per image and pooled.

Edge-touching particles are excluded and the rest weighted by the
Miles–Lantuéjoul correction: a particle whose bounding box is ``w × h`` pixels
could only have been seen whole if its reference point fell inside the frame
shrunk by ``w × h``, so its weight is ``W·H / ((W − w)(H − h))`` (Miles,
J. Microsc. 1978; Lantuéjoul, J. Microsc. 1980). Without that weighting, large
particles are under-counted because they touch the border more often.

Diameters are the equivalent-circle diameters ``eq_diameter_nm`` (or, without
calibration, ``eq_diameter_px`` with ``unit: px``).

The bootstrap intervals (``ci``) cover sampling only. Where a pixel size was
estimated, every nm of its image is off by the same unknown factor, whose
uncertainty (a standard deviation of its logarithm, see
:mod:`emcopilot.specimen.pixel_size`) ``ci_total`` adds in quadrature on a log scale; the
pooled figures take the images' scale errors as shared (they rest on one
recipe), so their uncertainty is the images' weighted mean, not less.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd


def miles_lantuejoul_weights(table: pd.DataFrame, height_px: int, width_px: int) -> np.ndarray:
    box_w = (table["bbox_x1"] - table["bbox_x0"]).to_numpy(float)
    box_h = (table["bbox_y1"] - table["bbox_y0"]).to_numpy(float)
    free = (width_px - box_w) * (height_px - box_h)
    with np.errstate(divide="ignore"):
        return np.where(free > 0, (width_px * height_px) / np.maximum(free, 1e-12), np.nan)


def lognormal_mle(diameters: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Maximum-likelihood lognormal fit: mu, sigma of ln d, median exp(mu), mean exp(mu + sigma²/2)."""
    logs = np.log(diameters)
    weights = np.ones_like(logs) if weights is None else weights
    mu = float(np.average(logs, weights=weights))
    sigma = float(np.sqrt(np.average((logs - mu) ** 2, weights=weights)))
    return {"mu": mu, "sigma": sigma, "median": float(np.exp(mu)), "mean": float(np.exp(mu + sigma**2 / 2))}


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


def _summary(diameters: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    mean = float(np.average(diameters, weights=weights))
    return {
        "mean": mean,
        "median": _weighted_quantile(diameters, weights, 0.5),
        "std": float(np.sqrt(np.average((diameters - mean) ** 2, weights=weights))),
        "volume_weighted_mean": float(np.sum(weights * diameters**4) / np.sum(weights * diameters**3)),
        "lognormal_median": lognormal_mle(diameters, weights)["median"],
    }


def describe(diameters: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = 1000,
             seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Summary statistics with percentile-bootstrap confidence intervals."""
    diameters = np.asarray(diameters, float)
    weights = np.ones_like(diameters) if weights is None else np.asarray(weights, float)
    keep = np.isfinite(diameters) & (diameters > 0) & np.isfinite(weights) & (weights > 0)
    diameters, weights = diameters[keep], weights[keep]
    out: dict[str, Any] = {"count": int(len(diameters)), "weighted_count": float(weights.sum())}
    if len(diameters) == 0:
        return out
    out.update(_summary(diameters, weights))
    out["lognormal"] = lognormal_mle(diameters, weights)
    if len(diameters) >= 3 and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = [_summary(diameters[idx], weights[idx])
                 for idx in rng.integers(0, len(diameters), (n_boot, len(diameters)))]
        tail = (1 - confidence) / 2
        out["ci"] = {key: [float(np.quantile([d[key] for d in draws], tail)),
                           float(np.quantile([d[key] for d in draws], 1 - tail))]
                     for key in ("mean", "median", "volume_weighted_mean", "lognormal_median")}
        out["confidence"] = confidence
    return out


def with_scale_uncertainty(stats: dict[str, Any], log_sd: float, sds: float = 1.96) -> None:
    """Add ``scale_log_sd`` and ``ci_total``: each sampling interval widened, on a log scale and in
    quadrature, by a pixel-size uncertainty of ``log_sd`` (``sds`` of it: 1.96 for the 95 % of ``ci``)."""
    if not log_sd or "ci" not in stats:
        return
    stats["scale_log_sd"] = float(log_sd)
    total = {}
    for key, (low, high) in stats["ci"].items():
        centre = stats.get(key)
        if not centre or low <= 0 or high <= 0:
            continue
        below = math.hypot(math.log(centre / low), sds * log_sd)
        above = math.hypot(math.log(high / centre), sds * log_sd)
        total[key] = [float(centre * math.exp(-below)), float(centre * math.exp(above))]
    stats["ci_total"] = total


def size_statistics(table: pd.DataFrame, images: Mapping[str, Mapping[str, Any]], *,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-image and pooled statistics.

    ``images`` maps each image name to ``{"shape": (H, W), "pixel_size_nm": float | None}`` and,
    for an estimated pixel size, ``"pixel_size_log_sd"`` (images with no particles still count
    towards the area and density). Where some images have a pixel size and others not, sizes are
    in nm: each image without one is described in px (its entry says ``unit: px``) and left out
    of the pooled figures, which name it in ``images_in_px``.
    """
    measured = {name for name, info in images.items() if info.get("pixel_size_nm")}
    calibrated = bool(measured) and "eq_diameter_nm" in table
    column, unit = ("eq_diameter_nm", "nm") if calibrated else ("eq_diameter_px", "px")
    in_px = sorted(set(images) - measured) if calibrated else []  # sizes in px do not pool with nm
    per_image, pooled_d, pooled_w, area_total, scale_sds = {}, [], [], 0.0, []
    for name, info in images.items():
        height, width = info["shape"]
        own_column, own_scale = (column, info.get("pixel_size_nm") if calibrated else 1.0)
        if name in in_px:
            own_column, own_scale = "eq_diameter_px", 1.0
        rows = table[table["image"] == name] if len(table) else table
        inside = rows[~rows["touches_edge"].astype(bool)] if len(rows) else rows
        weights = miles_lantuejoul_weights(inside, height, width) if len(inside) else np.zeros(0)
        diameters = inside[own_column].to_numpy(float) if len(inside) else np.zeros(0)
        area = height * width * own_scale**2
        stats = describe(diameters, weights, n_boot=n_boot, seed=seed)
        stats.update(detected=int(len(rows)), edge_excluded=int(len(rows) - len(inside)),
                     density_per_unit2=float(np.nansum(weights) / area))
        per_image[name] = stats
        if name in in_px:
            stats["unit"] = "px"
            continue
        if calibrated:
            with_scale_uncertainty(stats, float(info.get("pixel_size_log_sd") or 0.0))
            scale_sds.append((float(info.get("pixel_size_log_sd") or 0.0), float(np.nansum(weights))))
        pooled_d.append(diameters)
        pooled_w.append(weights)
        area_total += area
    diameters = np.concatenate(pooled_d) if pooled_d else np.zeros(0)
    weights = np.concatenate(pooled_w) if pooled_w else np.zeros(0)
    pooled = describe(diameters, weights, n_boot=n_boot, seed=seed)
    pooled.update(detected=int(sum(per_image[name]["detected"] for name in per_image if name not in in_px)),
                  edge_excluded=int(sum(s["edge_excluded"] for n, s in per_image.items() if n not in in_px)),
                  density_per_unit2=float(np.nansum(weights) / area_total) if area_total else 0.0,
                  images=len(images) - len(in_px))
    if in_px:
        pooled["images_in_px"] = in_px
    counted = sum(weight for _, weight in scale_sds)
    if counted > 0:
        with_scale_uncertainty(pooled, sum(sd * weight for sd, weight in scale_sds) / counted)
    return {"unit": unit, "diameter": column, "edge_correction": "Miles-Lantuejoul",
            "pooled": pooled, "per_image": per_image}
