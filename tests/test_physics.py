"""Physics adapters and the analytic renderer: noise statistics, Z contrast, PSF, scan, damage, bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import curve_fit

from emcopilot.core.errors import InputError
from emcopilot.core.interfaces import Micrograph, PhysicsAdapter
from emcopilot.specimen.layout import Layout, LayoutSpec, sample_layout
from emcopilot.core.params import ParamsProblem
from emcopilot.core.plugins import build_registry
from emcopilot_plugins import physics as physics_plugin
from emcopilot_plugins.generators import background, physical as physical_plugin
from emcopilot_plugins.physics import effects

REGISTRY = build_registry([("physics", physics_plugin), ("physical", physical_plugin)])
#: no scan distortion: isolates what a test measures
STILL = {"jitter_rms_nm": 0.0, "drift_nm_per_min": 0.0, "flyback_amplitude_nm": 0.0}


def adapter(name: str = "haadf-stem", **params):
    return REGISTRY.get("physics_adapter", name).create(params)


def generator(**params):
    return REGISTRY.get("generator", "physical").create(params)


def disc_layout(shape, centres, radius_px, z_values, pixel_size_nm=0.05) -> Layout:
    """Discs of equal (dome) thickness profile and given atomic numbers."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    thickness = np.zeros(shape, np.float32)
    z_map = np.full(shape, 6.0, np.float32)
    for index, ((row, col), z) in enumerate(zip(centres, z_values), start=1):
        rho2 = ((rows - row) ** 2 + (cols - col) ** 2) / radius_px ** 2
        inside = rho2 <= 1
        labels[inside] = index
        thickness[inside] = 2 * radius_px * pixel_size_nm * np.sqrt(1 - rho2[inside])
        z_map[inside] = z
    return Layout(labels, thickness, z_map, pixel_size_nm, "particles")


# --------------------------------------------------------------------------- detector statistics

@settings(max_examples=15, deadline=None)
@given(dose=st.floats(10.0, 1e5), gain=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_flat_image_variance_over_mean_is_the_gain(dose, gain, seed):
    # mean = gain·λ, variance = gain²·λ  ->  variance / mean = gain (counts: 1)
    model = adapter(dose_e_per_A2=dose, gain_du_per_e=gain, read_noise_du=0.0, offset_du=0.0, **STILL)
    image = model.apply(np.ones((256, 256), np.float32), 0.05, np.random.default_rng(seed))
    counts_per_px = dose * 100 * 0.05 ** 2
    assert image.mean() / gain == pytest.approx(counts_per_px, rel=0.01)
    assert image.var() / image.mean() == pytest.approx(gain, rel=0.03)


@settings(max_examples=10, deadline=None)
@given(dose=st.floats(20.0, 2e4), seed=st.integers(0, 2**16))
def test_doubling_the_dose_lowers_relative_noise_by_sqrt2(dose, seed):
    rng = np.random.default_rng(seed)
    flat = np.ones((256, 256), np.float32)
    relative = []
    for value in (dose, 2 * dose):
        image = adapter(dose_e_per_A2=value, read_noise_du=0.0, **STILL).apply(flat, 0.05, rng)
        relative.append(image.std() / image.mean())
    assert relative[0] / relative[1] == pytest.approx(math.sqrt(2), rel=0.03)


def test_read_noise_and_offset_add_as_in_the_model():
    model = adapter(dose_e_per_A2=400.0, gain_du_per_e=2.0, offset_du=100.0, read_noise_du=5.0, **STILL)
    image = model.apply(np.ones((256, 256), np.float32), 0.05, np.random.default_rng(0))
    counts = 400.0 * 100 * 0.05 ** 2  # 100 electrons per pixel
    assert image.mean() == pytest.approx(100 + 2 * counts, rel=0.005)
    assert image.var() == pytest.approx(4 * counts + 25, rel=0.03)


# --------------------------------------------------------------------------- contrast

@settings(max_examples=15, deadline=None)
@given(z1=st.integers(6, 92), z2=st.integers(6, 92), exponent=st.floats(1.2, 2.2))
def test_equal_thickness_particles_differ_by_z_to_the_n(z1, z2, exponent):
    layout = disc_layout((96, 192), [(48, 48), (48, 144)], 20, [z1, z2])
    clean = generator(z_exponent=exponent, support_thickness_nm=0.0).render(layout, np.random.default_rng(0))
    first, second = clean[layout.labels == 1].sum(), clean[layout.labels == 2].sum()
    assert first / second == pytest.approx((z1 / z2) ** exponent, rel=0.02)


def test_z_contrast_survives_the_microscope():
    layout = disc_layout((128, 256), [(64, 64), (64, 192)], 20, [78, 46])
    clean = generator(support_thickness_nm=0.0).render(layout, np.random.default_rng(0))
    image = adapter(dose_e_per_A2=1e6, read_noise_du=0.0, psf_fwhm_nm=0.15, **STILL) \
        .apply(clean, 0.05, np.random.default_rng(1))
    left, right = image[:, :128].sum(), image[:, 128:].sum()
    assert left / right == pytest.approx((78 / 46) ** 1.7, rel=0.02)


@pytest.mark.parametrize("modality, brighter", [("haadf-stem", True), ("bf-stem", False)])
def test_particles_brighter_in_haadf_darker_in_bf(modality, brighter):
    rng = np.random.default_rng(3)
    layout = sample_layout(LayoutSpec("particles", 3.0, 0.2, 0.02), (256, 256), 0.1, rng)
    clean = generator(modality=modality).render(layout, rng)
    image = adapter(modality).apply(clean, 0.1, rng, layout=layout)
    inside, outside = image[layout.labels > 0].mean(), image[layout.labels == 0].mean()
    assert (inside > 1.5 * outside) if brighter else (inside < 0.9 * outside)


# --------------------------------------------------------------------------- probe and atoms

def _gaussian_fwhm_px(image: np.ndarray) -> float:
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]]

    def model(coords, amplitude, row, col, sigma, background):
        r, c = coords
        return amplitude * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma ** 2)) + background

    peak = np.unravel_index(np.argmax(image), image.shape)
    start = (image.max(), peak[0], peak[1], 3.0, float(np.median(image)))
    params, _ = curve_fit(model, (rows.ravel(), cols.ravel()), image.ravel().astype(float), p0=start)
    return abs(params[3]) * effects.FWHM_PER_SIGMA


@settings(max_examples=8, deadline=None)
@given(psf_fwhm_nm=st.floats(0.06, 0.2), offset=st.tuples(st.floats(-0.5, 0.5), st.floats(-0.5, 0.5)))
def test_single_atom_is_as_wide_as_the_probe(psf_fwhm_nm, offset):
    pixel_size_nm = 0.02
    layout = sample_layout(LayoutSpec("atoms", 0.28, 0.0, 0.0), (64, 64), pixel_size_nm, np.random.default_rng(0))
    layout.atoms, layout.atom_z = np.array([[32.0 + offset[0], 32.0 + offset[1]]]), np.array([78])
    layout.redraw_atoms()
    clean = generator(atom_fwhm_nm=0.005, support_thickness_nm=0.0).render(layout, np.random.default_rng(0))
    image = adapter(dose_e_per_A2=1e9, read_noise_du=0.0, psf_fwhm_nm=psf_fwhm_nm, **STILL) \
        .apply(clean, pixel_size_nm, np.random.default_rng(1))
    assert _gaussian_fwhm_px(image) * pixel_size_nm == pytest.approx(psf_fwhm_nm, rel=0.05)


def test_rendered_atom_has_its_physical_width_and_mass():
    layout = sample_layout(LayoutSpec("atoms", 0.28, 0.0, 0.0), (64, 64), 0.01, np.random.default_rng(0))
    layout.atoms, layout.atom_z = np.array([[31.7, 32.2]]), np.array([78])
    layout.redraw_atoms()
    model = generator(atom_fwhm_nm=0.08, support_thickness_nm=0.0)
    clean = model.render(layout, np.random.default_rng(0))
    assert _gaussian_fwhm_px(clean) * 0.01 == pytest.approx(0.08, rel=0.05)
    # one atom scatters like a particle of one atom's volume: κ·Zⁿ·V / pixel area, summed
    expected = 2e-5 * 78 ** 1.7 * 0.0151 / 0.01 ** 2
    assert clean.sum() == pytest.approx(expected, rel=1e-3)


def test_apply_psf_false_leaves_the_blur_to_the_generator():
    clean = np.full((64, 64), 1.0, np.float32)
    clean[32, 32] = 100.0
    image = adapter(dose_e_per_A2=1e9, read_noise_du=0.0, apply_psf=False, psf_fwhm_nm=0.3, **STILL) \
        .apply(clean, 0.05, np.random.default_rng(0))
    assert image[32, 32] / image[32, 33] == pytest.approx(100.0, rel=0.01)


def test_probe_tail_spreads_intensity_without_losing_it():
    clean = np.zeros((256, 256), np.float32)
    clean[128, 128] = 1.0
    core = effects.blur_with_probe(clean, 2.0)
    tailed = effects.blur_with_probe(clean, 2.0, tail_fraction=0.3, tail_fwhm_px=10.0)
    # the Cauchy tail puts γ/sqrt(r² + γ²) of itself beyond r: ~1.5 % of the total leaves this frame
    assert tailed.sum() == pytest.approx(core.sum(), rel=0.03)
    assert tailed[128, 128 + 15] > 10 * core[128, 128 + 15]


# --------------------------------------------------------------------------- scan and BF transfer

def test_row_jitter_has_the_configured_rms_and_step_statistics():
    rng = np.random.default_rng(0)
    draws = np.array([effects.row_jitter(256, 1.5, 1.0, rng) for _ in range(400)])
    assert np.sqrt(np.mean(draws.var(axis=1) + draws.mean(axis=1) ** 2)) == pytest.approx(1.5, rel=0.1)
    steps = draws[:, 1:-1] - 0.5 * (draws[:, :-2] + draws[:, 2:])
    expected = effects.jitter_variance_ratio(256, 1.0) * 1.5 ** 2
    assert np.mean(steps ** 2) == pytest.approx(expected, rel=0.05)


def test_fourier_row_shift_moves_a_feature_without_blurring_it():
    rows, cols = np.mgrid[:32, :128]
    image = np.exp(-((cols - 64.0) ** 2) / (2 * 3.0 ** 2)).astype(np.float32) + 0 * rows
    shifted = effects.shift_rows(image, np.full(32, 2.5, np.float32))
    centre = (shifted[0] * np.arange(128)).sum() / shifted[0].sum()
    assert centre == pytest.approx(64.0 - 2.5, abs=0.01)
    expected = np.exp(-((np.arange(128) - 61.5) ** 2) / (2 * 3.0 ** 2))
    assert np.abs(shifted[0] - expected).max() < 1e-3


def test_drift_shears_the_frame():
    clean = np.zeros((128, 128), np.float32) + 0.01
    clean[:, 60:68] = 1.0  # a vertical bar
    model = adapter(dose_e_per_A2=1e8, read_noise_du=0.0, psf_fwhm_nm=0.0, jitter_rms_nm=0.0,
                    flyback_amplitude_nm=0.0, drift_nm_per_min=600.0, drift_direction_deg=0.0)
    image = model.apply(clean, 0.1, np.random.default_rng(0))
    first, last = (np.argmax(image[row] > 0.5 * image.max()) for row in (0, 127))
    # 600 nm/min for 127 rows x (128 x 10 µs + 500 µs) = 0.226 s -> 2.26 nm = 22.6 px
    assert abs(int(first) - int(last)) == pytest.approx(22.6, abs=1.5)


def test_bf_fringes_vanish_in_focus_and_appear_out_of_focus():
    layout = disc_layout((128, 128), [(64, 64)], 25, [78], pixel_size_nm=0.1)
    clean = generator(modality="bf-stem", support_roughness=0.0).render(layout, np.random.default_rng(0))
    in_focus = effects.phase_contrast(clean, 0.1, 0.0, 0.0, 200.0, 1.0)
    defocused = effects.phase_contrast(clean, 0.1, -200.0, 0.0, 200.0, 1.0)
    assert np.allclose(in_focus, clean, atol=1e-5)
    ring = np.abs(defocused - clean)[64, 64 + 20:64 + 32]  # across the particle edge
    far = np.abs(defocused - clean)[:, :5]
    assert ring.max() > 0.01 and far.max() < 0.2 * ring.max()


# --------------------------------------------------------------------------- damage

def test_radiation_damage_moves_and_removes_atoms_and_keeps_labels_exact():
    rng = np.random.default_rng(0)
    layout = sample_layout(LayoutSpec("atoms", 0.28, 0.0, 0.3, atom_min_separation_nm=0.5),
                           (256, 256), 0.03, rng)
    before = layout.atoms.copy()
    clean = generator().render(layout, rng)
    model = adapter(damage_critical_dose_e_per_A2=1.0, damage_loss_fraction=0.5, dose_e_per_A2=1e4)
    model.apply(clean, 0.03, rng, layout=layout)
    assert 0 < len(layout.atoms) < len(before)
    assert layout.count == len(layout.atoms) == layout.instances().count
    rows, cols = np.round(layout.atoms).astype(int).T
    assert np.array_equal(layout.labels[rows, cols], np.arange(1, len(layout.atoms) + 1))


def test_edge_erosion_shrinks_particles():
    rng = np.random.default_rng(0)
    layout = sample_layout(LayoutSpec("particles", 4.0, 0.1, 0.01), (256, 256), 0.1, rng)
    area = (layout.labels > 0).sum()
    clean = generator().render(layout, rng)
    adapter(erosion_nm_per_1e6_e_per_A2=0.05, dose_e_per_A2=1000.0).apply(clean, 0.1, rng, layout=layout)
    # incident dose 1000 / 0.05 = 2e4 e/Å² -> 0.001 nm: nothing; raise it through the collection fraction
    assert (layout.labels > 0).sum() == area
    adapter(erosion_nm_per_1e6_e_per_A2=50.0, dose_e_per_A2=1000.0, collection_fraction=0.01) \
        .apply(clean, 0.1, rng, layout=layout)  # 0.1e6 e/Å² x 50 nm/1e6 = 5 nm... capped by particle size
    assert (layout.labels > 0).sum() < 0.5 * area


# --------------------------------------------------------------------------- fit / restore plumbing

def test_fit_restore_round_trip_and_randomisation_stay_in_range():
    rng = np.random.default_rng(0)
    layout = sample_layout(LayoutSpec("particles", 2.0, 0.3, 0.04), (256, 256), 0.05, rng)
    clean = generator().render(layout, rng)
    truth = adapter(dose_e_per_A2=4e4, read_noise_du=5.0, psf_fwhm_nm=0.2)
    images = [Micrograph(truth.apply(clean, 0.05, rng), 0.05, name=f"m{k}") for k in range(2)]
    fitted = adapter().fit(images)
    assert json.loads(json.dumps(fitted))["units"] == "nm"
    assert [image["name"] for image in fitted["images"]] == ["m0", "m1"]
    restored = adapter()
    restored.restore(json.loads(json.dumps(fitted)))
    assert restored.conditions()["dose_e_per_A2"] == pytest.approx(fitted["conditions"]["dose_e_per_A2"])
    low, high = fitted["ranges"]["dose_e_per_A2"]
    draws = [restored.conditions(np.random.default_rng(k))["dose_e_per_A2"] for k in range(20)]
    assert all(low <= d <= high for d in draws) and len(set(draws)) > 1
    assert isinstance(restored, PhysicsAdapter)


def test_uncalibrated_images_are_fitted_in_pixels():
    rng = np.random.default_rng(1)
    layout = sample_layout(LayoutSpec("particles", 2.0, 0.3, 0.04), (128, 128), 0.05, rng)
    image = adapter().apply(generator().render(layout, rng), 0.05, rng)
    fitted = adapter().fit([Micrograph(image, None, name="jpeg")])
    assert fitted["units"] == "px" and "counts_per_px" in fitted["conditions"]
    assert "dose_e_per_A2" not in fitted["conditions"] and "pixels" in fitted["note"]
    model = adapter()
    model.restore(fitted)
    assert model.apply(generator().render(layout, rng), 0.05, rng).shape == (128, 128)


def test_detector_units_input_keeps_real_image_levels():
    model = adapter(clean_units="detector", offset_du=1000.0, gain_du_per_e=10.0, dose_e_per_A2=400.0,
                    read_noise_du=0.0, **STILL)
    clean = np.full((128, 128), 2000.0, np.float32)
    image = model.apply(clean, 0.05, np.random.default_rng(0))
    # median maps to the dose: 400 e/Å² x 0.25 Å² = 100 e -> 1000 + 10 x 100 DU
    assert image.mean() == pytest.approx(2000.0, rel=0.005)


def test_generator_contrast_fit_and_save_load(tmp_path):
    labels = np.zeros((64, 64), np.int32)
    labels[20:40, 20:40] = 1
    image = np.where(labels > 0, 50.0, 10.0).astype(np.float32)
    image[:2] = 0.0  # the dark level (vacuum), 3 % of the pixels
    model = generator(contrast_spread=0.0)
    fitted = model.fit([labels], [Micrograph(image, 0.1)], tmp_path, budget=None)
    assert fitted["object_to_background_ratio"] == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    layout = sample_layout(LayoutSpec("particles", 3.0, 0.2, 0.02), (256, 256), 0.1, rng)
    clean = model.generate([layout], rng)[0]
    ratio = np.mean(clean[layout.labels > 0]) / np.median(clean[layout.labels == 0])
    assert ratio == pytest.approx(5.0, rel=0.15)
    model.save(tmp_path)
    again = generator()
    again.load(tmp_path)
    assert again.fitted == model.fitted and again.params["contrast_spread"] == 0.0


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("pixel_size_nm", [0.0, -0.05, float("nan"), float("inf"), 1e6, True])
def test_apply_refuses_bad_pixel_sizes(pixel_size_nm):
    with pytest.raises(InputError, match="pixel_size_nm"):
        adapter().apply(np.ones((32, 32), np.float32), pixel_size_nm, np.random.default_rng(0))


@pytest.mark.parametrize("clean, message", [
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.array([[1.0, np.inf], [1.0, 1.0]]), "NaN or infinite"),
    (-np.ones((32, 32)), "negative"),
    (np.zeros((32, 32)), "no signal"),
    (np.ones(32), "2-D"),
])
def test_apply_refuses_bad_clean_images(clean, message):
    with pytest.raises(InputError, match=message):
        adapter().apply(clean, 0.1, np.random.default_rng(0))


@pytest.mark.parametrize("name, value", [("dose_e_per_A2", -100.0), ("read_noise_du", -1.0),
                                         ("psf_fwhm_nm", -0.1), ("clean_units", "volts")])
def test_bad_params_name_the_parameter(name, value):
    with pytest.raises(ParamsProblem, match=name):
        adapter(**{name: value})


@pytest.mark.parametrize("data, message", [
    (np.full((128, 128), 7.0), "constant"),
    (np.random.default_rng(0).random((32, 200)), "at least 64x64"),
    (np.where(np.eye(128) > 0, np.nan, 1.0), "NaN or infinite"),
])
def test_fit_refuses_unusable_images(data, message):
    with pytest.raises(InputError, match=message):
        adapter().fit([Micrograph(data, 0.1, name="bad.tif")])
    with pytest.raises(InputError, match="at least one"):
        adapter().fit([])


def test_restore_refuses_foreign_dicts():
    with pytest.raises(InputError, match="restore"):
        adapter().restore({"gain": 1})


def test_registration_is_light():
    code = ("import sys, emcopilot_plugins.physics; "
            "assert 'scipy' not in sys.modules and 'emcopilot_plugins.physics.adapter' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    described = {c.name: c for c in REGISTRY.all("physics_adapter")}
    assert set(described) == {"haadf-stem", "bf-stem"}
    assert "defocus_nm" in described["bf-stem"].params and "defocus_nm" not in described["haadf-stem"].params


def _round_trip(kind, fitted, spec, pixel_size_nm, count, dose_e_per_A2, offset_du, seed, **truth_params):
    """Render ``count`` layouts at known fitted values, record them with a still detector, fit a fresh model.

    Returns (fitted values, layouts, micrographs, the fresh model, rng)."""
    from types import SimpleNamespace

    from emcopilot.core.interfaces import Micrograph

    sample = SimpleNamespace(kind=kind, modality="haadf-stem")
    truth = REGISTRY.get("generator", "physical").create(truth_params, sample)
    truth.fitted = fitted
    rng = np.random.default_rng(seed)
    layouts = [sample_layout(spec, (256, 256), pixel_size_nm, rng) for _ in range(count)]
    detector = adapter(dose_e_per_A2=dose_e_per_A2, offset_du=offset_du, gain_du_per_e=2.0, read_noise_du=0.0,
                       psf_fwhm_nm=0.0, **STILL)
    images = [Micrograph(detector.apply(truth.render(layout, rng), pixel_size_nm, rng), pixel_size_nm=pixel_size_nm)
              for layout in layouts]
    model = REGISTRY.get("generator", "physical").create({}, sample)
    return model.fit([layout.labels for layout in layouts], images), layouts, images, model, rng


def test_atom_width_and_local_contrast_are_fitted_from_prior_atoms_and_rendered_back():
    fitted, layouts, images, model, _ = _round_trip(
        "atoms", {"atom_fwhm_nm": 0.15, "atom_contrast": 0.3, "support_fine_roughness": 0.02},
        LayoutSpec("atoms", 0.28, 0.0, 0.3), 0.03, 4, 5e4, 500.0, 3, atom_spread=0.0)
    assert fitted["atoms_used"] > 50
    assert fitted["atom_fwhm_nm"] == pytest.approx(0.15, rel=0.15)
    assert fitted["atom_contrast"] == pytest.approx(0.3, rel=0.25)  # the local median sees a little of the atom
    assert fitted["support_fine_roughness"] == pytest.approx(0.02, rel=0.5)
    # an uncalibrated image gives no width in nm: the declared parameters stay in use
    blind = model.fit([layouts[0].labels], [images[0].data])
    assert blind["atom_fwhm_nm"] is None and model.atom_fwhm_nm() == model.params["atom_fwhm_nm"]


def test_texture_of_a_flat_support_with_heavy_tailed_noise_is_zero():
    # heavy-tailed pixel noise (Laplace, as a detector's varying pulse heights make it) on a flat support:
    # the clipped variance minus the mean-square noise estimate finds ~no texture; the MAD-based variance
    # minus it would report a large negative one
    noise = np.random.default_rng(3).laplace(0, 10.0, (256, 256))
    everywhere = np.ones(noise.shape, bool)
    white = background.white_noise_variance(noise, everywhere)
    assert white == pytest.approx(200.0, rel=0.05)  # 2 b²
    assert abs(background.clipped_variance(noise) - white) < 0.08 * white
    assert background.robust_variance(noise) - white < -0.3 * white
    # a missed bright object is clipped away, not counted as texture
    spiked = noise.copy()
    spiked[100:104, 100:104] += 500.0
    assert background.clipped_variance(spiked) == pytest.approx(background.clipped_variance(noise), rel=0.05)


def test_zero_fine_roughness_renders_a_flat_support_under_atoms():
    from types import SimpleNamespace

    model = REGISTRY.get("generator", "physical").create({"atom_spread": 0.0},
                                                          SimpleNamespace(kind="atoms", modality="haadf-stem"))
    layout = sample_layout(LayoutSpec("atoms", 0.28, 0.0, 0.3), (128, 128), 0.03, np.random.default_rng(0))
    model.fitted = {"atom_fwhm_nm": 0.15, "atom_contrast": 0.3, "support_roughness": 0.5,
                    "support_fine_roughness": 0.0}
    clean = model.render(layout, np.random.default_rng(1))
    away = layout.labels == 0
    # measured: no texture at the atoms' scale; not the whole image's roughness (0.5), which buries them
    assert np.std(clean[away]) < 0.05 * np.median(clean[away])
    assert np.max(clean) > 1.2 * np.median(clean[away])


def test_particle_local_contrast_is_fitted_and_rendered_back():
    from types import SimpleNamespace

    # noise well above the texture: the offset comes from the noise curve (as the adapter measures it)
    fitted, layouts, _, _, rng = _round_trip(
        "particles", {"particle_contrast": 0.4, "support_fine_roughness": 0.03, "support_fine_sigma_nm": 2.0},
        LayoutSpec("particles", 3.0, 0.2, 0.05), 0.2, 3, 50.0, 200.0, 5, contrast_spread=0.0)
    assert fitted["particles_used"] > 20
    assert fitted["particle_contrast"] == pytest.approx(0.4, rel=0.2)
    assert fitted["support_fine_roughness"] == pytest.approx(0.03, rel=0.5)
    # BF: particles are dips of that depth
    bf = REGISTRY.get("generator", "physical").create({"contrast_spread": 0.0},
                                                       SimpleNamespace(kind="particles", modality="bf-stem"))
    bf.fitted = {"particle_contrast": 0.3}
    clean = bf.render(layouts[0], rng)
    inside = layouts[0].labels > 0
    assert np.mean(clean[inside]) < np.median(clean[~inside])


def test_real_support_bank_empties_the_particles_and_renders_new_ones_on_it(tmp_path):
    """``support: real``: the bank keeps the real support (its grains) without prior or missed particles."""
    from types import SimpleNamespace

    from emcopilot.core.interfaces import Micrograph

    sample = SimpleNamespace(kind="particles", modality="haadf-stem")
    rng = np.random.default_rng(11)
    rows, cols = np.mgrid[:600, :600]
    grains = 1.0 + 0.3 * np.sin(rows / 40.0) * np.cos(cols / 55.0)  # smooth support texture
    centres = rng.uniform(20, 580, size=(40, 2))
    discs = np.zeros((600, 600))
    labels = np.zeros((600, 600), np.int32)
    for index, (row, col) in enumerate(centres, start=1):
        inside = (rows - row) ** 2 + (cols - col) ** 2 <= 6 ** 2
        discs[inside] = 0.6
        if index <= 30:  # the prior found 30 of the 40 particles
            labels[inside & (labels == 0)] = index
    grains[:, :30] = 0.0  # a strip of vacuum gives the dark level
    data = 100 + 1000 * (grains + discs) + rng.normal(0, 5, (600, 600))
    model = REGISTRY.get("generator", "physical").create({"support": "real", "contrast_spread": 0.0}, sample)
    fitted = model.fit([labels], [Micrograph(data.astype(np.float32), pixel_size_nm=0.2)])
    assert fitted["support_crops"] == 4 and fitted["particle_contrast"] > 0.3
    assert all(crop.shape == (512, 512) and crop.dtype == np.float16 for crop in model.bank)
    # every disc, found or missed, is gone: the crops stay within the grains' range (relative to the median)
    for crop in model.bank:
        assert float(np.percentile(crop, 99.9)) < 1.4
    # the grains are still there
    assert float(np.std(np.asarray(model.bank[0], np.float32))) > 0.1
    # rendered particles stand the fitted contrast above the real support under them
    layout = disc_layout((256, 256), [(64, 64), (128, 190), (200, 80)], 8, [78, 78, 78], pixel_size_nm=0.2)
    clean = model.render(layout, np.random.default_rng(1))
    assert clean.shape == (256, 256) and np.isfinite(clean).all() and clean.min() >= 0
    inside = layout.labels > 0
    assert np.mean(clean[inside]) > 1.2 * np.median(clean[~inside])
    # the bank travels with the model (no pickles) and a field model ignores it
    model.save(tmp_path)
    again = REGISTRY.get("generator", "physical").create({"support": "real"}, sample)
    again.load(tmp_path)
    assert len(again.bank) == 4 and np.array_equal(again.bank[2], model.bank[2])
    (tmp_path / background.SUPPORT_BANK_FILE).write_bytes(b"not an npz")
    with pytest.raises(InputError, match="support bank"):
        again.load(tmp_path)
    (tmp_path / background.SUPPORT_BANK_FILE).unlink()
    with pytest.raises(InputError, match="missing or incomplete"):
        again.load(tmp_path)


def test_emptied_particles_take_the_supports_own_correlated_texture():
    """Holes are filled with texture copied from elsewhere: correlated as the real support's, with the
    shot-noise amplitude of the level they land on (white noise would leave a patch of another grain)."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    grain = ndimage.gaussian_filter(rng.standard_normal((400, 400)), 2.0)
    grain /= grain.std()
    level = np.where(np.arange(400)[None, :] < 200, 1.0, 4.0) * np.ones((400, 400))
    residual = np.sqrt(level) * grain  # texture amplitude grows as sqrt(level): shot-noise-like
    known = np.ones((400, 400), bool)
    for row, col in [(100, 100), (300, 100), (100, 300), (300, 300)]:
        known[row - 15:row + 15, col - 15:col + 15] = False
    filled = background.borrowed_texture(residual, known, level, np.random.default_rng(0))
    assert np.array_equal(filled[known], np.zeros(known.sum())) and np.isfinite(filled).all()

    def lag1(values):
        return float(np.corrcoef(values[:, :-1].ravel(), values[:, 1:].ravel())[0, 1])

    reference = lag1(residual[85:115, 85:115])
    for row, col, amplitude in [(100, 100, 1.0), (100, 300, 2.0)]:
        patch = filled[row - 15:row + 15, col - 15:col + 15]
        assert lag1(patch) > 0.6 * reference > 0.4  # correlated like the grain, not white
        assert float(patch.std()) == pytest.approx(amplitude, rel=0.35)  # the local level's amplitude


def test_real_support_crops_show_support_not_vacuum():
    from types import SimpleNamespace

    from emcopilot.core.interfaces import Micrograph

    rng = np.random.default_rng(2)
    data = rng.normal(50, 3, (1100, 1100))  # vacuum ...
    data[:, 800:] += 1000  # ... and a strip of support, 300 px wide
    labels = np.zeros(data.shape, np.int32)
    labels[500:510, 900:910] = 1
    model = REGISTRY.get("generator", "physical").create({"support": "real"},
                                                          SimpleNamespace(kind="particles", modality="haadf-stem"))
    model.fit([labels], [Micrograph(data.astype(np.float32), pixel_size_nm=0.2)])
    assert model.bank, "the support strip gives crops"
    assert all(float(np.median(np.asarray(crop, np.float32))) >= 0.25 for crop in model.bank)
