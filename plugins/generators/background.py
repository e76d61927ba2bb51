"""The support of real micrographs, as the ``physical`` generator measures and reuses it.

- Statistics of the signal (:func:`dark_level`, :func:`white_noise_variance`,
  :func:`clipped_variance`, :func:`robust_variance`) and the support under objects interpolated from
  around them (:func:`support_under`), shared by the generator's fits;
- the bank of real supports behind ``support: real`` (:func:`build_bank`, one
  micrograph at a time by :func:`empty_support`):
  crops of the working-grid micrographs in which the prior's objects, and any
  other compact excess of their polarity over :data:`MISSED_OBJECT_SIGMA`
  robust standard deviations at their scale, are replaced by the support
  interpolated from their rim plus the support's own texture copied from elsewhere
  (:func:`borrowed_texture`);
  :func:`random_crop` draws from it; :func:`save_bank` / :func:`load_bank`
  keep it next to the model without pickles.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emcopilot import InputError

#: Real supports (``support: real``): emptied crops of the real micrographs, this many pixels on a side ...
SUPPORT_CROP_PX = 512
#: ... at most this many per micrograph, kept in this file next to the config (float16, no pickles).
SUPPORT_CROPS_PER_IMAGE = 4
SUPPORT_BANK_FILE = "support_bank.npz"
#: A crop is kept when its median is at least this share of the micrograph's support level (its 75th
#: percentile above the dark level), i.e. it shows mostly support; so many random positions are tried.
SUPPORT_CROP_MIN_LEVEL = 0.25
SUPPORT_CROP_TRIES = 20
#: Pixels whose particle-scale residual over the interpolated support exceeds this many robust standard
#: deviations are objects the prior missed; they are emptied too, so the bank teaches no missed particle
#: as background.
MISSED_OBJECT_SIGMA = 3.0
#: Emptied pixels take the support's texture from elsewhere in the micrograph, at up to this many offsets.
TEXTURE_OFFSETS = 16


def white_noise_variance(data: np.ndarray, where: np.ndarray) -> float:
    """Pixel noise variance from the fourth difference along rows (cancels smooth texture; Σ w² = 70),
    over the pixels of ``where`` (away from objects, whose edges are not noise).

    A mean square: unbiased for white noise of any distribution, so it is best subtracted from a
    mean-square variance (:func:`clipped_variance`). Subtracted from a :func:`robust_variance` it
    removes too much where the noise is heavy-tailed (HAADF detectors: each electron's pulse height
    varies): on 8 of the 11 acstem-dev images that mix left a negative texture.
    """
    fourth = (data[:, :-4] - 4 * data[:, 1:-3] + 6 * data[:, 2:-2] - 4 * data[:, 3:-1] + data[:, 4:])
    use = where[:, 2:-2] & where[:, :-4] & where[:, 4:]
    return float(np.mean(fourth[use] ** 2)) / 70.0 if use.any() else 0.0


def clipped_variance(values: np.ndarray, clip: float = 5.0) -> float:
    """Variance after iterative ``clip``-sigma clipping (:func:`scipy.stats.sigmaclip`): gross outliers
    (hot pixels, bright objects the prior missed) are dropped; the noise's own tails, even exponential
    ones, lie almost all within 5 sigma (Laplace noise keeps 97 % of its variance)."""
    from scipy.stats import sigmaclip

    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    return float(sigmaclip(values, clip, clip).clipped.var()) if values.size else 0.0


def robust_variance(values: np.ndarray) -> float:
    """(1.4826 MAD)²: the objects the prior missed are outliers of the support, not its texture."""
    if not values.size:
        return 0.0
    return float((1.4826 * np.median(np.abs(values - np.median(values)))) ** 2)


def dark_level(data: np.ndarray) -> float:
    """The detector's zero-signal level: the offset of the Poisson–Gaussian noise model when the noise
    grows with the signal, else the 0.5th percentile (vacuum in the frame)."""
    from emcopilot_plugins.physics.estimate import fit_noise

    low = float(np.percentile(data, 0.5))
    try:
        noise = fit_noise(data)
    except Exception:  # noqa: BLE001 - too small or flat for a noise curve: fall back to the percentile
        return low
    if noise["noise_model"] == "poisson-gaussian" and noise["offset_du"] <= low:
        return float(noise["offset_du"])
    return low


#: Gaussians at least this wide (px) are computed on a block-averaged grid (see :func:`wide_gaussian`).
WIDE_SIGMA_PX = 8.0


def wide_gaussian(data: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(data, sigma)``, for wide kernels on a coarser grid.

    A Gaussian of ``sigma`` px removes everything finer than a few sigma, so it can
    be computed on ``f x f`` block means (``f = sigma // 4``, i.e. still 4 coarse
    pixels per sigma) with the width reduced by the blocks' own spread, and
    interpolated back bilinearly: the same smooth field to a fraction of a per cent
    of its range, at ``1/f^2`` of the cost (the support fits filter 2048² frames
    at sigma 20-80 px). Narrower kernels go to scipy unchanged.
    """
    from scipy import ndimage

    factor = int(sigma // 4)
    if sigma < WIDE_SIGMA_PX or factor < 2 or min(data.shape) < 4 * factor:
        return ndimage.gaussian_filter(data, sigma)
    rows, cols = data.shape
    # the frame's edges mirrored explicitly, as scipy's default 'reflect' does, over the kernel's reach
    margin = math.ceil(4 * sigma / factor) * factor
    padded = np.pad(data, ((margin, margin + -rows % factor), (margin, margin + -cols % factor)), mode="symmetric")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean((1, 3))
    coarse_sigma = math.sqrt(max(sigma ** 2 - (factor ** 2 - 1) / 12, 1.0)) / factor  # a block mean's own spread
    smooth = ndimage.gaussian_filter(blocks, coarse_sigma)
    full = ndimage.zoom(smooth, factor, order=1, mode="nearest", grid_mode=True)
    return full[margin:margin + rows, margin:margin + cols]


def support_under(data: np.ndarray, known: np.ndarray, sigma: float) -> np.ndarray:
    """The smooth level of ``data`` from the ``known`` pixels only, everywhere: normalised Gaussian
    convolution of width ``sigma``, widened (x2 per step) where too few known pixels are near."""
    from scipy import ndimage

    known = np.asarray(known, bool)
    values = np.where(known, data, 0.0)
    out = np.full(data.shape, np.nan)
    sigma = max(1.0, float(sigma))
    while np.isnan(out).any() and sigma < 4 * max(data.shape):
        weight = wide_gaussian(known.astype(np.float64), sigma)
        smooth = wide_gaussian(values, sigma) / np.maximum(weight, 1e-12)
        take = np.isnan(out) & (weight > 0.2)
        out[take] = smooth[take]
        sigma *= 2
    return np.where(np.isnan(out), float(np.median(data[known])) if known.any() else 0.0, out)


def build_bank(label_maps: Sequence[np.ndarray], images: Sequence[Any], modality: str) -> list[np.ndarray]:
    """Crops of the real micrographs with their objects emptied, relative to each one's support level.

    ``modality`` 'haadf-stem' (objects brighter than the support) or 'bf-stem' (darker).
    """
    rng = np.random.default_rng(0)
    bank = []
    for labels, image in zip(label_maps, images):
        emptied = empty_support(np.asarray(labels), np.asarray(getattr(image, "data", image), np.float64),
                                modality, rng)
        if emptied is not None:
            bank += _support_crops(emptied, rng)
    return bank


def empty_support(labels: np.ndarray, raw: np.ndarray, modality: str,
                  rng: np.random.Generator) -> np.ndarray | None:
    """One micrograph with its prior objects and the compact excess they leave replaced by the support
    interpolated from their rim (plus its texture from elsewhere), in units of its support level;
    ``None`` when nothing of the support is left or it carries no signal."""
    from scipy import ndimage

    dark = dark_level(raw)
    signal = raw - dark if modality == "haadf-stem" else dark - raw  # objects positive
    ids = np.unique(labels[labels > 0])
    areas = np.bincount(labels.ravel())[ids] if len(ids) else np.array([16.0])
    diameter = max(2.0, float(np.median(2 * np.sqrt(areas / np.pi))))
    grow = max(1, round(0.25 * diameter))  # the particles' blurred rims too
    outside = ~ndimage.binary_dilation(labels > 0, iterations=grow)
    # the particle-scale excess the prior left: compact (< 3 diameters) and MISSED_OBJECT_SIGMA above
    smooth = ndimage.gaussian_filter(signal, max(0.5, 0.15 * diameter))
    excess = smooth - support_under(signal, outside, diameter)
    texture = math.sqrt(robust_variance(excess[outside]))
    missed, count = ndimage.label(excess > MISSED_OBJECT_SIGMA * texture)
    if count:
        compact = np.bincount(missed.ravel()) <= math.pi / 4 * (3 * diameter) ** 2
        compact[0] = False
        outside &= ~ndimage.binary_dilation(compact[missed], iterations=grow)
    if not outside.any():
        return None
    level = float(np.percentile(np.abs(signal[outside]), 75))  # a typical support level
    if level <= 0:
        return None
    level_under = support_under(signal, outside, 0.5 * diameter)
    counts_under = level_under if modality == "haadf-stem" else -level_under  # detected intensity, raw - dark
    texture_fill = borrowed_texture(signal - level_under, outside, counts_under, rng)
    filled = np.where(outside, signal, level_under + texture_fill)
    if modality != "haadf-stem":  # back to the transmitted signal
        filled = -filled
    return np.maximum(filled / level, 0.0).astype(np.float16)


def borrowed_texture(residual: np.ndarray, known: np.ndarray, level: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """A texture for the pixels outside ``known``, copied from ``residual`` where it is known.

    Each hole pixel takes the residual of a known pixel at one common random offset (the image is
    treated as periodic), offset after offset until every hole is filled (at most
    :data:`TEXTURE_OFFSETS`; what is left gets white noise of the residual's robust spread). A copy
    is scaled by ``sqrt(level here / level there)``: the shot noise's variance grows with the
    detected intensity ``level`` (counts above the detector's zero; clipped to a ratio of 1/4..4).
    Copying keeps what white noise would lose: the spatial correlation of the real noise and support
    grains (probe blur, scan, JPEG smoothing), so an emptied particle leaves no patch of a different
    grain behind for the segmenter to learn from.
    """
    known = np.asarray(known, bool)
    floor = max(float(np.percentile(level[known], 5)), 1e-12) if known.any() else 1.0
    level = np.maximum(level, floor)
    texture = np.zeros(residual.shape, np.float64)
    todo = ~known
    rows, cols = residual.shape
    for _ in range(TEXTURE_OFFSETS):
        if not todo.any():
            break
        shift = (int(rng.integers(rows)), int(rng.integers(cols)))
        take = todo & np.roll(known, shift, axis=(0, 1))
        ratio = np.clip(level[take] / np.roll(level, shift, axis=(0, 1))[take], 0.25, 4.0)
        texture[take] = np.roll(residual, shift, axis=(0, 1))[take] * np.sqrt(ratio)
        todo &= ~take
    if todo.any():
        texture[todo] = math.sqrt(robust_variance(residual[known])) * rng.standard_normal(int(todo.sum()))
    return texture


def _support_crops(emptied: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to :data:`SUPPORT_CROPS_PER_IMAGE` random crops that show mostly support (vacuum-only crops
    would carry no signal); one crop, the whole side, of a micrograph smaller than :data:`SUPPORT_CROP_PX`."""
    rows, cols = emptied.shape
    side = min(SUPPORT_CROP_PX, rows, cols)
    wanted = SUPPORT_CROPS_PER_IMAGE if min(rows, cols) > SUPPORT_CROP_PX else 1
    crops = []
    for _ in range(SUPPORT_CROP_TRIES):
        row, col = int(rng.integers(rows - side + 1)), int(rng.integers(cols - side + 1))
        crop = emptied[row:row + side, col:col + side]
        if float(np.median(crop)) >= SUPPORT_CROP_MIN_LEVEL:
            crops.append(crop.copy())
            if len(crops) == wanted:
                break
    return crops


def random_crop(bank: Sequence[np.ndarray], shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of the support bank, randomly rotated and flipped (reflected where too small)."""
    crop = bank[int(rng.integers(len(bank)))]
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pad = [(0, max(0, want - have)) for want, have in zip(shape, crop.shape)]
    if any(after for _, after in pad):
        crop = np.pad(crop, pad, mode="symmetric")
    row = int(rng.integers(crop.shape[0] - shape[0] + 1))
    col = int(rng.integers(crop.shape[1] - shape[1] + 1))
    return np.array(crop[row:row + shape[0], col:col + shape[1]], np.float32)


def save_bank(bank: Sequence[np.ndarray], directory: Path) -> None:
    """Write the crops next to a model (compressed npz, float16; nothing is pickled)."""
    np.savez_compressed(Path(directory) / SUPPORT_BANK_FILE, **{f"crop{i:04d}": c for i, c in enumerate(bank)})


def load_bank(directory: Path) -> list[np.ndarray]:
    """The crops saved by :func:`save_bank` (none when there is no file); refuses anything else."""
    path = Path(directory) / SUPPORT_BANK_FILE
    if not path.is_file():
        return []
    try:
        with np.load(path, allow_pickle=False) as crops:
            bank = [np.asarray(crops[key], np.float16) for key in sorted(crops.files)]
    except (ValueError, OSError) as error:
        raise InputError(f"physical generator: {path} is not a support bank: {error}") from error
    if any(c.ndim != 2 or not np.isfinite(c).all() for c in bank):
        raise InputError(f"physical generator: {path} holds crops that are not finite 2-D images")
    return bank
