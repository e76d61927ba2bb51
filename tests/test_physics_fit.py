"""fit() recovers the conditions apply() used, and works on the real development images."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from emcopilot.core.interfaces import Micrograph
from emcopilot.io.readers import read_micrograph
from emcopilot.specimen.layout import LayoutSpec, sample_layout
from emcopilot.core.plugins import build_registry
from emcopilot_plugins import physics as physics_plugin
from emcopilot_plugins.generators import physical as physical_plugin

REGISTRY = build_registry([("physics", physics_plugin), ("physical", physical_plugin)])
PIXEL_SIZE_NM = 0.05


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.floats(100.0, 400.0), read_over_shot=st.floats(0.7, 1.5), gain=st.floats(0.5, 4.0),
       psf_px=st.floats(2.5, 8.0), jitter_px=st.floats(0.4, 1.5), seed=st.integers(0, 2**16))
def test_fit_recovers_dose_read_noise_psf_and_jitter(counts, read_over_shot, gain, psf_px, jitter_px, seed):
    """Ranges: background counts 100-400 e/px, read noise 0.7-1.5x the background shot noise
    (smaller read noise is not separable from shot noise), PSF 2.5-8 px, jitter 0.4-1.5 px rms."""
    rng = np.random.default_rng(seed)
    truth = {"dose_e_per_A2": counts / (100 * PIXEL_SIZE_NM ** 2), "gain_du_per_e": gain,
             "read_noise_du": read_over_shot * np.sqrt(counts) * gain, "psf_fwhm_nm": psf_px * PIXEL_SIZE_NM,
             "jitter_rms_nm": jitter_px * PIXEL_SIZE_NM, "drift_nm_per_min": 0.5, "flyback_amplitude_nm": 0.0}
    layout = sample_layout(LayoutSpec("particles", 2.0, 0.3, 0.04), (512, 512), PIXEL_SIZE_NM, rng)
    clean = REGISTRY.get("generator", "physical").create({}).render(layout, rng)
    image = REGISTRY.get("physics_adapter", "haadf-stem").create(truth).apply(clean, PIXEL_SIZE_NM, rng)
    fitted = REGISTRY.get("physics_adapter", "haadf-stem").create({}).fit([Micrograph(image, PIXEL_SIZE_NM)])
    found = fitted["images"][0]
    assert found["dose_e_per_A2"] == pytest.approx(truth["dose_e_per_A2"], rel=0.10)
    assert found["read_noise_du"] == pytest.approx(truth["read_noise_du"], rel=0.15)
    assert found["psf_fwhm_nm"] == pytest.approx(truth["psf_fwhm_nm"], rel=0.15)
    assert found["jitter_rms_nm"] == pytest.approx(truth["jitter_rms_nm"], rel=0.25)


@pytest.mark.shared_data
def test_fit_on_real_acstem_and_jpeg_images(shared_data):
    acstem = sorted((shared_data / "acstem-dev" / "images").glob("*.tif"))[0]
    jpeg = shared_data / "ardagen-dev" / "images" / "Pd1.jpg"
    model = REGISTRY.get("physics_adapter", "haadf-stem").create({})
    calibrated = model.fit(read_micrograph(acstem))
    found = calibrated["images"][0]
    assert calibrated["units"] == "nm" and found["noise_model"] == "poisson-gaussian"
    # aberration-corrected probe at 0.0293 nm/px: 0.05-0.2 nm; tens of electrons per pixel
    assert 0.05 < found["psf_fwhm_nm"] < 0.2
    assert 5 < found["counts_per_px"] < 1000
    uncalibrated = model.fit(read_micrograph(jpeg))
    assert uncalibrated["units"] == "px" and np.isfinite(uncalibrated["images"][0]["psf_fwhm_px"])


@pytest.mark.parametrize("sigma", [3.0, 8.0, 12.5, 40.0])
def test_wide_gaussians_on_a_coarse_grid_match_scipy(sigma):
    from scipy import ndimage

    from emcopilot_plugins.generators.background import wide_gaussian

    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:301, :257]  # sizes no block factor divides
    data = (rng.random((301, 257)) < 0.3) * 1.0 + np.sin(rows / 17.0) + cols / 100.0
    exact = ndimage.gaussian_filter(data, sigma)
    fast = wide_gaussian(data, sigma)
    assert fast.shape == data.shape
    assert np.abs(fast - exact).max() < 0.01 * np.ptp(exact)  # edges mirrored as scipy mirrors them
