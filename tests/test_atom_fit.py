"""Sub-pixel atom positions: the batched 2-D Gaussian fit and its columns in the particle table."""
from __future__ import annotations

import numpy as np
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.analysis.atom_fit import FWHM_PER_SIGMA, fit_gaussians
from emcopilot.analysis.measure import columns, particle_table


def spots(points, shape=(96, 96), sigma=1.6, amplitude=50.0, background=20.0):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    image = np.full(shape, background, float)
    for row, col in points:
        image += amplitude * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma ** 2))
    return image


def isolated(count=30, side=160, spacing=14, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(10, side - 10, spacing), np.arange(10, side - 10, spacing)), -1)
    return (grid.reshape(-1, 2)[:count] + rng.uniform(-0.5, 0.5, (count, 2))).astype(float)


def test_positions_width_height_and_background_are_recovered_from_noisy_spots():
    rng = np.random.default_rng(1)
    truth = isolated()
    image = rng.poisson(spots(truth, (160, 160))).astype(float)
    start = np.round(truth)  # a finder's whole pixels: 0.4 px rms off; the photon limit here is ~0.12 px
    fit = fit_gaussians(image, start, 1.6)
    assert fit.converged.all()
    rms = np.sqrt(np.mean(np.sum((fit.points - truth) ** 2, 1)))
    assert rms < 0.2 < np.sqrt(np.mean(np.sum((start - truth) ** 2, 1)))
    assert np.median(fit.sigma_px) == pytest.approx(1.6, rel=0.05)
    assert np.median(fit.amplitude) == pytest.approx(50, rel=0.05)
    assert np.median(fit.background) == pytest.approx(20, rel=0.05)


def test_a_close_neighbour_does_not_pull_the_fit():
    truth = np.array([[40.3, 40.6], [40.1, 47.8], [70.2, 20.4]])  # two atoms 7.2 px = 4.5 sigma apart
    fit = fit_gaussians(spots(truth), np.round(truth), 1.6)
    assert fit.converged.all() and np.abs(fit.points - truth).max() < 0.15


def test_no_atom_no_fit_and_the_given_point_stands():
    rng = np.random.default_rng(2)
    image = rng.normal(100, 1, (64, 64))
    points = np.array([[30.0, 30.0]])
    fit = fit_gaussians(image, points, 1.6)
    assert not fit.converged[0] and np.array_equal(fit.points, points) and np.isnan(fit.amplitude[0])


def test_edges_nan_pixels_and_empty_input():
    truth = np.array([[1.2, 30.4], [30.3, 30.2]])
    image = spots(truth, (64, 64))
    image[29, 33] = np.nan
    fit = fit_gaussians(image, np.round(truth), 1.6)
    assert fit.converged.all() and np.abs(fit.points - truth).max() < 0.05
    empty = fit_gaussians(image, np.zeros((0, 2)), 1.6)
    assert empty.points.shape == (0, 2) and empty.converged.shape == (0,)


def test_the_particle_table_reports_fitted_atoms_when_the_finder_gives_their_width():
    truth = np.array([[20.3, 30.6], [60.8, 50.1]])
    image = spots(truth)
    found = np.round(truth)
    metadata = {"atom_fwhm_px": 1.6 * FWHM_PER_SIGMA}
    table = particle_table(Instances(points=found, metadata=metadata), Micrograph(image, pixel_size_nm=0.03))
    assert list(table.columns) == columns(True, atoms=True)
    assert table["atom_fit"].all()
    assert np.allclose(table[["y", "x"]].to_numpy(), truth, atol=0.02)
    assert np.allclose(table["atom_sigma_nm"], 1.6 * 0.03, rtol=0.02)
    assert np.allclose(table["atom_amplitude"], 50, rtol=0.02) and np.allclose(table["atom_background"], 20, rtol=0.02)
    unfitted = particle_table(Instances(points=found), Micrograph(image))  # no width given: positions as found
    assert list(unfitted.columns) == columns(False, atoms=True) and not unfitted["atom_fit"].any()
    assert np.array_equal(unfitted[["y", "x"]].to_numpy(), found)
    dark = particle_table(Instances(points=found, metadata=metadata),
                          Micrograph(200 - image, pixel_size_nm=0.03, modality="bf-stem"))
    assert dark["atom_fit"].all() and np.allclose(dark["atom_amplitude"], -50, rtol=0.02)
    assert np.allclose(dark[["y", "x"]].to_numpy(), truth, atol=0.02)
