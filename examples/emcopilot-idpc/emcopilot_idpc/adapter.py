"""iDPC-STEM image formation.

iDPC integrates the centre-of-mass shift of the diffraction pattern, so the
image is (to first order, thin weak-phase object) the projected electrostatic
potential blurred by the probe; integrating the DPC gradient turns white shot
noise into noise with a 1/|k| amplitude spectrum (Lazić et al.,
Ultramicroscopy 160, 265, 2016).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


class IdpcAdapter:
    def __init__(self, probe_fwhm_nm: float, dose_e_per_A2: float, phase_per_Z_thickness: float):
        self.probe_fwhm_nm = probe_fwhm_nm
        self.dose_e_per_A2 = dose_e_per_A2
        self.phase_per_Z_thickness = phase_per_Z_thickness
        self.fitted: dict = {}

    def fit(self, micrographs):
        """Fit the noise level from the high-frequency residual of real images."""
        residual = [float(np.std(m.data - ndimage.gaussian_filter(m.data, 2.0))) for m in micrographs]
        self.fitted = {"residual_std": float(np.median(residual)) if residual else None}
        return self.fitted

    def restore(self, fitted):
        self.fitted = dict(fitted)

    def apply(self, clean, pixel_size_nm, rng, layout=None):
        """Blur by the probe and add integrated shot noise.

        With a layout, the image is the projected phase (∝ Z × thickness);
        otherwise ``clean`` is taken as the phase image.
        """
        if layout is not None:
            image = self.phase_per_Z_thickness * np.asarray(layout.z_map, float) * np.asarray(layout.thickness_nm, float)
        else:
            image = np.asarray(clean, dtype=np.float64)
        sigma_px = self.probe_fwhm_nm / FWHM_PER_SIGMA / pixel_size_nm
        image = ndimage.gaussian_filter(image, sigma_px) if sigma_px > 0 else image
        electrons_per_px = self.dose_e_per_A2 * (pixel_size_nm * 10.0) ** 2
        white = rng.standard_normal(image.shape) / np.sqrt(electrons_per_px)
        ky, kx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
        k = np.hypot(ky, kx)
        k[0, 0] = np.inf  # no noise in the mean
        noise = np.real(np.fft.ifft2(np.fft.fft2(white) / (k * image.shape[0])))
        scale = np.ptp(image) if np.ptp(image) > 0 else 1.0
        return (image + scale * noise).astype(np.float32)
