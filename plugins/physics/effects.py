"""Imaging effects of a scanning transmission electron microscope, one function each.

All lengths are in pixels here; :mod:`.adapter` converts the physical
parameters (nm, µs, e/Å²) with the pixel size. Every function takes and
returns float32 images (rows = slow scan axis, columns = fast scan axis).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))  # 2.3548: FWHM of a Gaussian in units of sigma

#: Below this expected count per pixel shot noise is drawn exactly from a Poisson law; above it
#: from a Gaussian of equal mean and variance (skewness 1/sqrt(λ) < 0.1; 5x faster).
POISSON_EXACT_BELOW = 100.0


# --------------------------------------------------------------------------- transfer (probe, lens)

@lru_cache(maxsize=32)
def _frequencies(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared spatial frequency (cycles/px)² on an rfft2 grid, and its square root."""
    ky = sfft.fftfreq(rows)[:, None]
    kx = sfft.rfftfreq(cols)[None, :]
    k2 = (ky ** 2 + kx ** 2).astype(np.float32)
    return k2, np.sqrt(k2)


def probe_otf(rows: int, cols: int, sigma_px: float, tail_fraction: float, tail_fwhm_px: float) -> np.ndarray:
    """Optical transfer function of the probe on an rfft2 grid.

    Probe intensity = (1 - w)·Gaussian(sigma) + w·tail, where the tail is the 2-D
    Cauchy (Poisson) kernel γ/(2π(r² + γ²)^{3/2}), whose Fourier transform is
    exp(-2πγ|k|) and whose half width at half maximum is 0.766γ. A Gaussian's
    transform is exp(-2π²σ²k²).
    """
    k2, k = _frequencies(rows, cols)
    otf = np.exp(-2 * math.pi ** 2 * sigma_px ** 2 * k2)
    if tail_fraction > 0:
        gamma_px = tail_fwhm_px / 2 / 0.766
        otf = (1 - tail_fraction) * otf + tail_fraction * np.exp(-2 * math.pi * gamma_px * k)
    return otf.astype(np.float32)


def _pad_width(image: np.ndarray, reach_px: float) -> int:
    return int(min(math.ceil(reach_px), min(image.shape) - 1))


def filter_fourier(image: np.ndarray, transfer, reach_px: float) -> np.ndarray:
    """Apply a transfer function (callable (rows, cols) -> rfft2-grid array) with mirror padding."""
    pad = _pad_width(image, reach_px)
    padded = np.pad(image, pad, mode="reflect") if pad > 0 else image
    rows = sfft.next_fast_len(padded.shape[0], real=True)
    cols = sfft.next_fast_len(padded.shape[1], real=True)
    spectrum = sfft.rfft2(padded, s=(rows, cols), workers=1)
    out = sfft.irfft2(spectrum * transfer(rows, cols), s=(rows, cols), workers=1)
    return out[pad:pad + image.shape[0], pad:pad + image.shape[1]].astype(np.float32)


def _gaussian_blur(image: np.ndarray, sigma_px: float, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Separable Gaussian blur, mirror edges; short kernels as shifted sums (faster than scipy)."""
    radius = int(math.ceil(3.5 * sigma_px))
    if radius > 6:
        sigmas = [sigma_px if axis in axes else 0.0 for axis in (0, 1)]
        return ndimage.gaussian_filter(image, sigmas, mode="mirror", truncate=3.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image
    for axis in axes:
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        length = out.shape[axis]
        acc = taps[0] * (padded[:length] if axis == 0 else padded[:, :length])
        for index in range(1, taps.size):
            acc += taps[index] * (padded[index:index + length] if axis == 0 else padded[:, index:index + length])
        out = acc
    return out.astype(np.float32, copy=False)


def blur_with_probe(image: np.ndarray, sigma_px: float, tail_fraction: float = 0.0,
                    tail_fwhm_px: float = 0.0, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Convolve with the probe intensity (Gaussian core, optional long tail).

    ``axes`` restricts a tail-free Gaussian to some axes (the other is then
    applied by :func:`shift_rows`).
    """
    if sigma_px <= 0 and tail_fraction <= 0:
        return image
    if tail_fraction <= 0:
        return _gaussian_blur(image, sigma_px, axes)
    reach = max(4 * sigma_px, 3 * tail_fwhm_px)
    return filter_fourier(image, lambda r, c: probe_otf(r, c, sigma_px, tail_fraction, tail_fwhm_px), reach)


def electron_wavelength_nm(accelerating_voltage_kV: float) -> float:
    """Relativistic electron wavelength: λ = h / sqrt(2 m0 e V (1 + eV / 2 m0 c²)).

    Numerically λ[nm] = 1.22639 / sqrt(V (1 + 0.97848e-6 V)), V in volts
    (Williams & Carter, Transmission Electron Microscopy, 2nd ed., eq. 1.6).
    """
    volts = accelerating_voltage_kV * 1e3
    return 1.22639 / math.sqrt(volts * (1 + 0.97848e-6 * volts))


def phase_contrast(transmitted: np.ndarray, pixel_size_nm: float, defocus_nm: float, cs_mm: float,
                   accelerating_voltage_kV: float, strength: float) -> np.ndarray:
    """Bright-field phase contrast: Fresnel fringes at edges from a defocused lens.

    Weak-phase-object approximation (Kirkland, Advanced Computing in Electron
    Microscopy, 2nd ed., §3.4): I = 1 + 2·φ ⊗ F⁻¹[sin χ(k)], with the aberration
    phase χ(k) = π λ Δf k² + (π/2) Cs λ³ k⁴. The projected phase φ is taken
    proportional to the absorption -ln(T / T_median) of the clean image
    (both scale with projected mass-thickness); ``strength`` is that ratio.
    By reciprocity BF-STEM has the same transfer as conventional TEM.
    """
    wavelength = electron_wavelength_nm(accelerating_voltage_kV)
    reference = float(np.median(transmitted))
    phase = -np.log(np.maximum(transmitted, 1e-6 * reference) / reference).astype(np.float32)

    def sin_chi(rows: int, cols: int) -> np.ndarray:
        k2 = _frequencies(rows, cols)[0] / pixel_size_nm ** 2  # (1/nm)²
        chi = math.pi * wavelength * defocus_nm * k2 + 0.5 * math.pi * cs_mm * 1e6 * wavelength ** 3 * k2 ** 2
        return np.sin(chi).astype(np.float32)

    fringes = filter_fourier(phase, sin_chi, reach_px=32)
    return (transmitted * (1 + 2 * strength * fringes)).astype(np.float32)


# --------------------------------------------------------------------------- scanning

def jitter_variance_ratio(rows: int, exponent: float) -> float:
    """var(s[y] - (s[y-1] + s[y+1])/2) / var(s) for the row shifts of :func:`row_jitter`.

    For a stationary process with power P(f) on a length L: var(s) ∝ Σ P and the
    second difference multiplies each component by 1 - cos(2πf/L), so its
    variance ∝ Σ P·(1 - cos(2πf/L))².
    """
    length = 2 * rows
    freqs = np.arange(1, length // 2)
    power = freqs.astype(np.float64) ** -exponent
    return float(np.sum(power * (1 - np.cos(2 * math.pi * freqs / length)) ** 2) / np.sum(power))


def row_jitter(rows: int, rms_px: float, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Row shifts (px) with a 1/f^exponent power spectrum and expected rms ``rms_px``.

    Drawn on twice the frame length (so the frame is not periodic) from random
    Fourier coefficients; the expected variance is scaled exactly, each frame's
    realisation varies around it as a 1/f process does.
    """
    if rms_px <= 0:
        return np.zeros(rows, np.float32)
    length = 2 * rows
    freqs = np.arange(length // 2 + 1, dtype=np.float64)
    power = np.zeros_like(freqs)
    power[1:-1] = freqs[1:-1] ** -exponent
    coefficients = np.sqrt(power) * (rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size))
    shifts = sfft.irfft(coefficients, n=length)[:rows]
    expected_variance = 4 * power.sum() / length ** 2  # var of irfft of Hermitian coefficients
    return (shifts * (rms_px / math.sqrt(expected_variance))).astype(np.float32)


def shift_rows(image: np.ndarray, shift_px: np.ndarray, blur_sigma_px: float = 0.0) -> np.ndarray:
    """Row y shows the specimen at x + shift[y]: an exact (band-limited) Fourier shift per row,
    optionally with a Gaussian blur of ``blur_sigma_px`` along the rows (free in Fourier space).

    Linear interpolation would low-pass every shifted row (down to 1/3 of the
    power at Nyquist for random sub-pixel shifts), i.e. add blur that jitter
    does not cause. Rows are mirror-padded so content does not wrap around.
    """
    rows, cols = image.shape
    reach = float(np.abs(shift_px).max()) + 3.5 * blur_sigma_px
    pad = min(int(math.ceil(reach)) + 2, cols - 1)
    padded = np.pad(image, ((0, 0), (pad, pad)), mode="reflect")
    length = sfft.next_fast_len(padded.shape[1], real=True)
    freqs = sfft.rfftfreq(length).astype(np.float32)
    angle = np.float32(2 * math.pi) * shift_px.astype(np.float32)[:, None] * freqs[None, :]
    phase = np.empty(angle.shape, np.complex64)  # exp(iθ) in single precision (np.exp would use complex128)
    phase.real, phase.imag = np.cos(angle), np.sin(angle)
    if blur_sigma_px > 0:
        phase *= np.exp(-2 * math.pi ** 2 * blur_sigma_px ** 2 * freqs ** 2)[None, :]
    spectrum = sfft.rfft(padded, n=length, axis=1, workers=1)
    spectrum *= phase
    shifted = sfft.irfft(spectrum, n=length, axis=1, workers=1)
    return shifted[:, pad:pad + cols].astype(np.float32)


def scan_distortion(image: np.ndarray, row_shift_px: np.ndarray, row_offset_px: np.ndarray,
                    col_offset_px: np.ndarray, row_blur_sigma_px: float = 0.0) -> np.ndarray:
    """Resample as a distorted raster scan records it (edges extended).

    Pixel (y, x) shows the specimen at (y + row_offset[y], x + row_shift[y] + col_offset[x]):
    ``row_shift`` holds jitter and the x-drift shear (exact Fourier shift per
    row), ``row_offset`` the y-drift stretch along the slow axis and
    ``col_offset`` the flyback distortion at line starts (both linear
    interpolation, applied only where they exceed 1/1000 px).
    ``row_blur_sigma_px``: the probe's blur along rows, fused into the row
    shift (it commutes with both the shift and the slow-axis stretch).
    """
    rows, cols = image.shape
    out = image
    if np.abs(row_offset_px).max() > 1e-3:
        source_rows = np.clip(np.arange(rows) + row_offset_px, 0, rows - 1)
        low = np.floor(source_rows).astype(np.intp)
        high = np.minimum(low + 1, rows - 1)
        weight = (source_rows - low).astype(np.float32)[:, None]
        out = out[low] * (1 - weight) + out[high] * weight
    if np.abs(row_shift_px).max() > 1e-3 or row_blur_sigma_px > 0:
        out = shift_rows(out, row_shift_px, row_blur_sigma_px)
    affected = np.flatnonzero(np.abs(col_offset_px) > 1e-3)
    if affected.size:
        width = int(affected.max()) + 1
        source_cols = np.clip(np.arange(width, dtype=np.float32) + col_offset_px[:width], 0, cols - 1)
        left = np.floor(source_cols).astype(np.intp)
        right = np.minimum(left + 1, cols - 1)
        frac = source_cols - left
        out = out.copy() if out is image else out
        out[:, :width] = out[:, left] * (1 - frac) + out[:, right] * frac
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- detector

def detect(expected_counts: np.ndarray, gain_du_per_e: float, offset_du: float, read_noise_du: float,
           rng: np.random.Generator) -> np.ndarray:
    """Detector signal: offset + gain·Poisson(λ) + Gaussian read noise.

    Poisson–Gaussian model of a counting/integrating detector (Foi et al.,
    IEEE Trans. Image Process. 17 (2008) 1737): mean = offset + gain·λ,
    variance = gain²·λ + read². Where λ >= POISSON_EXACT_BELOW shot and read
    noise are drawn together as one Gaussian of that mean and variance.
    """
    gain, offset, read = np.float32(gain_du_per_e), np.float32(offset_du), np.float32(read_noise_du)
    lam = expected_counts.astype(np.float32, copy=False)
    signal = offset + gain * lam
    signal += np.sqrt(gain * gain * lam + read * read) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < POISSON_EXACT_BELOW
    if low.any():
        exact = gain * rng.poisson(lam[low]).astype(np.float32) + offset
        if read > 0:
            exact += read * rng.standard_normal(exact.shape, dtype=np.float32)
        signal[low] = exact
    return signal
