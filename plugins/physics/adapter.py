"""HAADF-STEM and BF-STEM physics adapters: clean image -> micrograph as recorded.

Division of labour (nothing is applied twice):

- The **generator** provides contrast: what the specimen looks like to a
  perfect instrument (HAADF: scattered fraction ∝ thickness·Zⁿ; BF:
  transmitted fraction), noise-free and, for the analytic ``physical``
  generator, unblurred. A learned generator's output is smooth and
  noise-free too, but already carries the blur (and BF fringes) of the real
  images: apply it with ``apply_psf: false``.
- The **adapter** adds the instrument, in this order:
  1. radiation damage during the frame (only with an atomistic or particle
     ``layout``): atoms hop or leave, particle edges erode; the layout is
     edited in place so its labels stay exact;
  2. transfer (``apply_psf``): BF only, phase-contrast fringes from a
     defocused lens; then the probe PSF (Gaussian FWHM + optional tail);
  3. scan geometry: row jitter (1/f spectrum), linear drift (shear and
     stretch along the slow axis), flyback distortion at line starts;
  4. detector: Poisson shot noise at the dose, gain, offset, read noise.

Dose convention: ``dose_e_per_A2`` is the *effective* dose, electrons per Å²
reaching the detector at the recorded image's median level (what an image
can reveal). The blurred, scanned signal is scaled so that its median
receives this dose;
``collection_fraction`` converts it to the incident dose for radiation
damage. ``clean_units: detector`` means the clean image is in the real
images' detector units (a learned generator): the fitted offset is removed
first.

``fit`` estimates gain, offset, read noise, effective dose, PSF width,
background spectral slope, jitter and intensity range per image
(:mod:`.estimate`); their medians replace the declared parameters and their
spread (widened by 25 %) is the range ``apply`` draws from when
``randomize`` is on. Uncalibrated images (``pixel_size_nm`` None) are fitted
in pixels (``"units": "px"``): ``apply`` then uses counts per pixel and
widths in pixels, i.e. assumes synthetic images share the real pixel scale.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from emcopilot.core.errors import InputError
from emcopilot.core.interfaces import PIXEL_SIZE_RANGE_NM, Micrograph

from . import effects
from .effects import FWHM_PER_SIGMA

#: Relative widening of the fitted per-image spread used for randomisation.
RANGE_WIDENING = 1.25
#: Keys randomised within the fitted ranges (drawn log-uniformly: all positive scales).
RANDOMISED = ("dose_e_per_A2", "counts_per_px", "gain_du_per_e", "read_noise_du",
              "psf_fwhm_nm", "psf_fwhm_px", "jitter_rms_nm", "jitter_rms_px")
#: Fitted quantities that replace declared parameters, with their unit system.
FITTED_NM = ("gain_du_per_e", "offset_du", "read_noise_du", "dose_e_per_A2", "psf_fwhm_nm", "jitter_rms_nm")
FITTED_PX = ("gain_du_per_e", "offset_du", "read_noise_du", "counts_per_px", "psf_fwhm_px", "jitter_rms_px")


def check_pixel_size(pixel_size_nm: Any) -> float:
    if isinstance(pixel_size_nm, bool) or not isinstance(pixel_size_nm, (int, float, np.floating)) \
            or not math.isfinite(pixel_size_nm) \
            or not (PIXEL_SIZE_RANGE_NM[0] <= pixel_size_nm <= PIXEL_SIZE_RANGE_NM[1]):
        raise InputError(f"pixel_size_nm must be a number within {PIXEL_SIZE_RANGE_NM[0]}–"
                         f"{PIXEL_SIZE_RANGE_NM[1]} nm, got {pixel_size_nm!r}")
    return float(pixel_size_nm)


def check_clean(clean: Any, units: str) -> np.ndarray:
    clean = np.asarray(clean)
    if clean.ndim != 2 or min(clean.shape) < 2:
        raise InputError(f"clean image must be 2-D and at least 2x2, got shape {clean.shape}")
    if not np.issubdtype(clean.dtype, np.number) or np.iscomplexobj(clean):
        raise InputError(f"clean image must be real-valued, got {clean.dtype}")
    clean = clean.astype(np.float32, copy=True)
    bad = ~np.isfinite(clean)
    if bad.any():
        raise InputError(f"clean image has {int(bad.sum())} NaN or infinite pixels")
    if units == "relative" and clean.min() < 0:
        raise InputError(f"clean image has negative values (min {float(clean.min()):.4g}); with "
                         "clean_units 'relative' it must be a non-negative signal (0 = no electrons)")
    return clean


class StemAdapter:
    """Shared machinery of the STEM adapters; subclasses set the modality and transfer."""

    modality = "stem"

    def __init__(self, params: Mapping[str, Any], sample: Any = None):
        self.params = dict(params)
        self.sample = sample
        self.fitted: dict[str, Any] | None = None

    # ------------------------------------------------------------------ fit / restore

    def fit(self, micrographs: Sequence[Micrograph]) -> dict[str, Any]:
        """Estimate imaging conditions per micrograph; keep and return them (JSON-able)."""
        from .estimate import fit_image
        if not micrographs:
            raise InputError(f"{self.modality}.fit needs at least one micrograph, got none")
        calibrated = all(m.pixel_size_nm is not None for m in micrographs)
        units = "nm" if calibrated else "px"
        images = []
        for micrograph in micrographs:
            estimate = fit_image(micrograph.data, micrograph.name, self.params["jitter_spectrum_exponent"])
            estimate["pixel_size_nm"] = micrograph.pixel_size_nm
            if micrograph.pixel_size_nm is not None:
                size = micrograph.pixel_size_nm
                estimate.update(dose_e_per_A2=estimate["counts_per_px"] / (100 * size ** 2),
                                psf_fwhm_nm=estimate["psf_fwhm_px"] * size,
                                jitter_rms_nm=estimate["jitter_rms_px"] * size)
            images.append(estimate)
        keys = FITTED_NM if calibrated else FITTED_PX
        extra = ("spectrum_beta", "intensity_p0_5_du", "intensity_median_du", "intensity_p99_5_du")
        conditions = {key: float(np.median([image[key] for image in images])) for key in keys + extra}
        ranges = {}
        for key in keys:
            if key in RANDOMISED:
                values = [image[key] for image in images]
                low, high = min(values) / RANGE_WIDENING, max(values) * RANGE_WIDENING
                if high > 0:
                    ranges[key] = [max(low, high * 1e-3), high]
        self.fitted = {"modality": self.modality, "units": units,
                       "note": None if calibrated else "uncalibrated images: lengths and dose in pixels",
                       "conditions": conditions, "ranges": ranges, "images": images}
        return self.fitted

    def restore(self, fitted: Mapping[str, Any]) -> None:
        """Use conditions returned earlier by :meth:`fit`."""
        if not isinstance(fitted, Mapping) or "conditions" not in fitted or fitted.get("units") not in ("nm", "px"):
            raise InputError(f"{self.modality}.restore needs the dict returned by fit() "
                             "(with 'units' nm|px and 'conditions')")
        keys = FITTED_NM if fitted["units"] == "nm" else FITTED_PX
        missing = [key for key in keys if key not in fitted["conditions"]]
        if missing:
            raise InputError(f"{self.modality}.restore: fitted conditions lack {', '.join(missing)}")
        self.fitted = dict(fitted)

    # ------------------------------------------------------------------ conditions

    def conditions(self, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Declared parameters, overridden by fitted ones, drawn within the fitted ranges."""
        current = dict(self.params)
        if self.fitted is None:
            return current
        current.update(self.fitted["conditions"])
        if rng is not None and self.params["randomize"]:
            for key, (low, high) in self.fitted.get("ranges", {}).items():
                current[key] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return current

    def _in_pixels(self, conditions: Mapping[str, Any], pixel_size_nm: float) -> dict[str, float]:
        area_A2 = 100 * pixel_size_nm ** 2  # (10 Å/nm · nm/px)²
        if "counts_per_px" in conditions:  # fitted on uncalibrated images
            counts = conditions["counts_per_px"]
            psf_fwhm_px, jitter_px = conditions["psf_fwhm_px"], conditions["jitter_rms_px"]
        else:
            counts = conditions["dose_e_per_A2"] * area_A2
            psf_fwhm_px = conditions["psf_fwhm_nm"] / pixel_size_nm
            jitter_px = conditions["jitter_rms_nm"] / pixel_size_nm
        return {"counts_per_px": counts, "dose_e_per_A2": counts / area_A2,
                "psf_sigma_px": psf_fwhm_px / FWHM_PER_SIGMA, "jitter_rms_px": jitter_px,
                "tail_fwhm_px": conditions["psf_tail_fwhm_nm"] / pixel_size_nm}

    # ------------------------------------------------------------------ apply

    def apply(self, clean: np.ndarray, pixel_size_nm: float, rng: np.random.Generator,
              layout: Any = None) -> np.ndarray:
        """Degrade a clean image as the microscope would; float32 in detector units (DU)."""
        pixel_size_nm = check_pixel_size(pixel_size_nm)
        units = self.params["clean_units"]
        signal = check_clean(clean, units)
        conditions = self.conditions(rng)
        scale = self._in_pixels(conditions, pixel_size_nm)
        if units == "detector":
            signal -= np.float32(conditions["offset_du"])
        if layout is not None:
            signal = self._damage(signal, layout, conditions, scale, pixel_size_nm, rng)
        if not float(signal.max()) > 0:
            raise InputError("clean image carries no signal above the offset (maximum <= 0)")
        geometry = self._scan_geometry(signal.shape, pixel_size_nm, conditions, scale, rng)
        # a Gaussian probe's blur along rows is fused into the per-row Fourier shift of the scan
        fuse = self.params["apply_psf"] and conditions["psf_tail_fraction"] <= 0 and scale["psf_sigma_px"] > 0
        if self.params["apply_psf"]:
            signal = self._transfer(signal, pixel_size_nm, conditions, scale, axes=(0,) if fuse else (0, 1))
        signal = effects.scan_distortion(signal, *geometry, row_blur_sigma_px=scale["psf_sigma_px"] if fuse else 0.0)
        # Transfer and interpolation can undershoot at sharp edges; a count rate cannot be negative.
        np.maximum(signal, 0, out=signal)
        reference = float(np.median(signal[::2, ::2]))  # every 4th pixel: 4x faster, same level
        if reference <= 0:
            reference = float(signal.mean())
        expected = signal * np.float32(scale["counts_per_px"] / reference)
        return effects.detect(expected, conditions["gain_du_per_e"], conditions["offset_du"],
                              conditions["read_noise_du"], rng)

    def _transfer(self, signal, pixel_size_nm, conditions, scale, axes=(0, 1)) -> np.ndarray:
        return effects.blur_with_probe(signal, scale["psf_sigma_px"], conditions["psf_tail_fraction"],
                                       scale["tail_fwhm_px"], axes)

    def _scan_geometry(self, shape, pixel_size_nm, conditions, scale, rng):
        """(row shift, row offset, column offset) in px: jitter + drift shear, drift stretch, flyback."""
        rows, cols = shape
        row_time_us = cols * conditions["pixel_dwell_us"] + conditions["flyback_us"]
        direction = conditions["drift_direction_deg"]
        angle = math.radians(direction) if direction is not None else rng.uniform(0, 2 * math.pi)
        drift_px_per_us = conditions["drift_nm_per_min"] / 60e6 / pixel_size_nm
        elapsed_us = np.arange(rows) * row_time_us
        row_shift = effects.row_jitter(rows, scale["jitter_rms_px"], conditions["jitter_spectrum_exponent"], rng)
        row_shift = row_shift + (drift_px_per_us * math.cos(angle) * elapsed_us).astype(np.float32)
        row_offset = drift_px_per_us * math.sin(angle) * elapsed_us
        line_time_us = np.arange(cols) * conditions["pixel_dwell_us"]
        # the scan coils lag after flyback: the distortion decays along the line as exp(-t/τ)
        col_offset = (conditions["flyback_amplitude_nm"] / pixel_size_nm
                      * np.exp(-line_time_us / conditions["flyback_decay_us"])).astype(np.float32)
        return row_shift, row_offset, col_offset

    def _damage(self, signal, layout, conditions, scale, pixel_size_nm, rng) -> np.ndarray:
        from .damage import displace_atoms, erode_edges, hop_probability
        incident = scale["dose_e_per_A2"] / conditions["collection_fraction"]
        if layout.kind == "atoms":
            probability = hop_probability(incident, conditions["damage_critical_dose_e_per_A2"])
            return displace_atoms(signal, layout, probability, conditions["damage_hop_nm"] / pixel_size_nm,
                                  conditions["damage_loss_fraction"], rng)
        if layout.kind == "particles":
            erosion_nm = conditions["erosion_nm_per_1e6_e_per_A2"] * incident / 1e6
            return erode_edges(signal, layout, erosion_nm / pixel_size_nm)
        return signal


class HaadfAdapter(StemAdapter):
    """High-angle annular dark field: particles brighter than the support."""

    modality = "haadf-stem"


class BrightFieldAdapter(StemAdapter):
    """Bright field: particles darker than the support, phase fringes at edges, high background."""

    modality = "bf-stem"

    def _transfer(self, signal, pixel_size_nm, conditions, scale, axes=(0, 1)) -> np.ndarray:
        voltage = conditions["accelerating_voltage_kV"]
        if voltage is None:
            voltage = getattr(self.sample, "accelerating_voltage_kV", None) or 200.0
        if conditions["phase_contrast_strength"] > 0:
            signal = effects.phase_contrast(signal, pixel_size_nm, conditions["defocus_nm"], conditions["cs_mm"],
                                            voltage, conditions["phase_contrast_strength"])
        return super()._transfer(signal, pixel_size_nm, conditions, scale, axes)
