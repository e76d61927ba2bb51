"""Estimating imaging conditions from one real micrograph.

- Noise: Poisson–Gaussian model, variance = gain·(mean - offset) + read²
  (Foi et al., IEEE Trans. Image Process. 17 (2008) 1737), from block-wise
  local means and the variance of a signal-cancelling residual along scan
  lines (after Immerkær, Comput. Vis. Image Underst. 64 (1996) 300). The offset and the
  read noise are not separable from one image: a positive intercept is read
  as read noise (offset 0), a negative one as an offset (read noise 0).
- Probe PSF and background spectrum: the power spectrum along scan lines,
  which row jitter leaves intact, fitted with
  P(kx) = mean over ky of A·(k² + k0²)^(-β/2)·exp(-4π²σ²k²) + noise floor.
- Scan jitter: shifts between adjacent rows, minus the same statistic between
  adjacent columns (specimen structure and noise contribute equally to both;
  jitter only to rows), converted to the rms row shift of the 1/f^α process
  that :func:`.effects.row_jitter` draws.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import fft as sfft
from scipy import ndimage
from scipy.optimize import least_squares

from emcopilot.core.errors import InputError
from emcopilot.specimen.scale import MIN_WORKING_SIDE_PX

from .effects import FWHM_PER_SIGMA, jitter_variance_ratio

#: Smallest image side the estimators work on (blocks, spectra, row statistics): the core's
#: least working-scale side, which the loop checks before it fits.
MIN_SIDE_PX = MIN_WORKING_SIDE_PX
NOISE_BLOCK_PX = 16
NOISE_BINS = 16


def check_image(image: np.ndarray, name: str) -> np.ndarray:
    """Refuse what cannot be fitted: not 2-D, non-finite, tiny or constant images."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{name}: a micrograph must be 2-D, got shape {image.shape}")
    if min(image.shape) < MIN_SIDE_PX:
        raise InputError(f"{name}: image is {image.shape[1]}x{image.shape[0]} px; fitting imaging "
                         f"conditions needs at least {MIN_SIDE_PX}x{MIN_SIDE_PX}")
    bad = ~np.isfinite(image)
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} pixels are NaN or infinite")
    image = image.astype(np.float64)
    spread = float(image.max() - image.min())
    if spread <= 1e-9 * max(1.0, abs(float(image.mean()))):
        raise InputError(f"{name}: the image is constant ({float(image.mean())!r}); nothing to fit")
    return image


# --------------------------------------------------------------------------- noise

def noise_residual(image: np.ndarray) -> np.ndarray:
    """Fourth difference along scan lines, [1, -4, 6, -4, 1] / sqrt(70).

    It cancels any cubic trend along the row and has unit noise gain (sum of
    squared weights = 1), so var(residual) = variance of white noise (the
    idea of Immerkær's estimator, restricted to rows: shifts between rows from
    scan jitter must not count as noise). A high-pass across the rows as well
    would count less of a sharp specimen's texture as noise, but on exported
    micrographs (JPEG, resampled), whose noise is correlated across rows, it
    reads less noise than they show, and the synthetic images rendered at that
    noise look less like them (``benchmarks/closed_loop.py``: lower label-free
    and real scores); the noise the synthetic images need is the noise along
    the scan lines.
    """
    kernel = np.array([1.0, -4.0, 6.0, -4.0, 1.0]) / math.sqrt(70.0)
    return ndimage.correlate1d(image, kernel, axis=1, mode="reflect")[:, 2:-2]


def _blocks(array: np.ndarray, block: int) -> np.ndarray:
    rows, cols = (array.shape[0] // block) * block, (array.shape[1] // block) * block
    return array[:rows, :cols].reshape(rows // block, block, cols // block, block).swapaxes(1, 2) \
        .reshape(-1, block * block)


def noise_curve(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local mean, noise variance) per intensity bin, from 16x16 blocks.

    The median block variance of each bin is used (blocks crossing edges have
    inflated variance) and divided by the median of χ²_ν/ν for the residual's
    ν ≈ 256 / 2.63 effective degrees of freedom (the residual's autocorrelation
    1, -0.8, 0.4, -0.114, 0.014 gives Σρ² = 2.63).
    """
    residual = noise_residual(image)
    means = _blocks(image[:, 2:-2], NOISE_BLOCK_PX).mean(axis=1)
    variances = (_blocks(residual, NOISE_BLOCK_PX) ** 2).mean(axis=1)
    order = np.argsort(means)
    bins = np.array_split(order, min(NOISE_BINS, max(2, len(order) // 8)))
    dof = NOISE_BLOCK_PX ** 2 / 2.63
    median_bias = (1 - 2 / (9 * dof)) ** 3
    curve_mean = np.array([np.median(means[b]) for b in bins])
    curve_var = np.array([np.median(variances[b]) for b in bins]) / median_bias
    return curve_mean, curve_var


def fit_noise(image: np.ndarray) -> dict:
    """Gain (DU per electron), offset and read noise (DU) of the Poisson–Gaussian model."""
    means, variances = noise_curve(image)
    weights = 1.0 / np.maximum(variances, 1e-12)
    slope, intercept = np.polyfit(means, variances, 1, w=weights)
    result = {"curve_mean_du": means.tolist(), "curve_variance_du2": variances.tolist()}
    if slope <= 0:
        # Noise does not grow with the signal (processed or compressed data): the shot-noise
        # gain is only bounded. Treat the median noise as shot noise at the median level.
        level = max(float(np.median(means) - image.min()), 1e-12)
        result.update(gain_du_per_e=float(np.median(variances) / level), offset_du=float(image.min()),
                      read_noise_du=0.0, noise_model="signal-independent")
        return result
    offset = max(0.0, -intercept / slope)
    read = math.sqrt(max(intercept, 0.0))
    result.update(gain_du_per_e=float(slope), offset_du=float(offset), read_noise_du=float(read),
                  noise_model="poisson-gaussian")
    return result


# --------------------------------------------------------------------------- spectrum and PSF

def row_spectrum(image: np.ndarray) -> np.ndarray:
    """Power along scan lines: |FFT|² of the Hann-windowed image, averaged over ky.

    Normalised by Σw² so that white noise of variance v gives P = v.
    """
    rows, cols = image.shape
    window = np.outer(np.hanning(rows), np.hanning(cols))
    centred = (image - image.mean()) * window
    power = np.abs(sfft.rfft2(centred, workers=1)) ** 2 / np.sum(window ** 2)
    return power.mean(axis=0)


def _spectrum_model(params: np.ndarray, kx: np.ndarray, ky: np.ndarray, k0: float) -> np.ndarray:
    log_amplitude, beta, log_sigma, log_floor = params
    k2 = kx[:, None] ** 2 + ky[None, :] ** 2
    signal = np.exp(log_amplitude) * (k2 + k0 ** 2) ** (-beta / 2) \
        * np.exp(-4 * math.pi ** 2 * math.exp(2 * log_sigma) * k2)
    return signal.mean(axis=1) + math.exp(log_floor)


def fit_spectrum(image: np.ndarray, noise_variance: float, floor_tolerance: float = 20.0) -> dict:
    """PSF sigma (px), spectral slope β of the background and the noise floor, from the row spectrum.

    The noise floor starts at ``noise_variance`` (from the noise model) and may
    move within a factor ``floor_tolerance`` of it.
    """
    rows, cols = image.shape
    power = row_spectrum(image)
    kx = sfft.rfftfreq(cols)
    ky = sfft.fftfreq(rows)[::max(1, rows // 128)]
    use = slice(3, None)  # the lowest frequencies are dominated by the window and by gradients
    k0 = 2.0 / max(rows, cols)
    floor0 = max(noise_variance, 1e-6 * float(power[use].mean()))
    signal0 = max(float(power[3:8].mean()) - floor0, floor0)
    start = np.array([math.log(signal0 * (kx[5] ** 2) ** 1.0), 2.0, math.log(1.0), math.log(floor0)])
    lower = np.array([-np.inf, 0.0, math.log(0.05), math.log(floor0) - math.log(floor_tolerance)])
    upper = np.array([np.inf, 5.0, math.log(30.0), math.log(floor0) + math.log(floor_tolerance)])

    def residual(params: np.ndarray) -> np.ndarray:
        return np.log(_spectrum_model(params, kx[use], ky, k0)) - np.log(power[use])

    best = None
    for log_sigma in (math.log(0.7), math.log(2.0), math.log(6.0)):
        start[2] = log_sigma
        solution = least_squares(residual, start, bounds=(lower, upper), loss="soft_l1", f_scale=0.3)
        if best is None or solution.cost < best.cost:
            best = solution
    log_amplitude, beta, log_sigma, log_floor = best.x
    # at the lower bound the spectrum shows no roll-off: blur below ~0.1 px, or noise removed (JPEG)
    resolved = bool(log_sigma > lower[2] + 0.2)
    return {"psf_sigma_px": float(math.exp(log_sigma)), "psf_resolved": resolved, "spectrum_beta": float(beta),
            "noise_floor_du2": float(math.exp(log_floor)), "spectrum_fit_cost": float(best.cost)}


# --------------------------------------------------------------------------- jitter

def _shift_variance(image: np.ndarray) -> float:
    """Variance of each row's shift (px) relative to the mean of its two neighbours.

    Linearised: d = Σ c·g / Σ g², with c = row - (previous + next)/2 and g the
    row's gradient. The second difference cancels the specimen's vertical
    gradient (first order), which otherwise mimics jitter. Rows are weighted by
    Σ g²: the error variance of d is ∝ 1/Σ g², so the weighted variance stays
    finite on flat rows and remains additive (jitter + structure + noise).
    """
    smooth = ndimage.gaussian_filter1d(image, 1.0, axis=1)
    centre = smooth[1:-1]
    curvature = centre - 0.5 * (smooth[:-2] + smooth[2:])
    gradient = np.gradient(centre, axis=1)
    energy = np.sum(gradient ** 2, axis=1)
    valid = energy > 1e-12 * max(float(energy.max()), 1e-300)
    shifts = np.sum(curvature * gradient, axis=1)[valid] / energy[valid]
    weights = energy[valid] / energy[valid].sum()
    mean = float(np.sum(weights * shifts))
    return float(np.sum(weights * (shifts - mean) ** 2))


def fit_jitter(image: np.ndarray, exponent: float) -> dict:
    """Rms row shift (px) of 1/f^exponent scan jitter."""
    row_variance = _shift_variance(image)
    column_variance = _shift_variance(image.T)
    step_variance = max(row_variance - column_variance, 0.0)
    rms = math.sqrt(step_variance / jitter_variance_ratio(image.shape[0], exponent))
    return {"jitter_rms_px": rms, "row_step_rms_px": math.sqrt(row_variance),
            "column_step_rms_px": math.sqrt(column_variance)}


# --------------------------------------------------------------------------- one image

def fit_image(image: np.ndarray, name: str, jitter_exponent: float) -> dict:
    """Every estimate for one image, in detector units (DU) and pixels."""
    image = check_image(image, name)
    noise = fit_noise(image)
    # the row spectrum weights pixels by the squared window: so must the (signal-dependent) noise floor
    weights = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1])) ** 2
    weighted_mean = float(np.sum(weights * image) / np.sum(weights))
    noise_variance = noise["gain_du_per_e"] * max(weighted_mean - noise["offset_du"], 0.0) \
        + noise["read_noise_du"] ** 2
    # a Poisson–Gaussian fit pins the white-noise floor; processed images leave it free
    tolerance = 1.1 if noise["noise_model"] == "poisson-gaussian" else 20.0
    spectrum = fit_spectrum(image, noise_variance, tolerance)
    jitter = fit_jitter(image, jitter_exponent)
    counts = (float(np.median(image)) - noise["offset_du"]) / noise["gain_du_per_e"]
    percentiles = np.percentile(image, [0.5, 50, 99.5])
    return {
        "name": name, "shape": list(image.shape), **noise,
        "counts_per_px": counts,
        "psf_fwhm_px": spectrum["psf_sigma_px"] * FWHM_PER_SIGMA, "psf_resolved": spectrum["psf_resolved"],
        "spectrum_beta": spectrum["spectrum_beta"], "noise_floor_du2": spectrum["noise_floor_du2"],
        "jitter_rms_px": jitter["jitter_rms_px"], "row_step_rms_px": jitter["row_step_rms_px"],
        "column_step_rms_px": jitter["column_step_rms_px"],
        "intensity_p0_5_du": float(percentiles[0]), "intensity_median_du": float(percentiles[1]),
        "intensity_p99_5_du": float(percentiles[2]),
    }
