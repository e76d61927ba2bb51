"""emcopilot.specimen.scale: working-grid planning, resampling, mapping instances back."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from emcopilot.core.errors import InputError
from emcopilot.specimen.scale import (labels_to_original, plan_scaling, points_to_original, points_to_working, to_working,
                             to_working_labels)


def test_plan_uses_the_ratio_of_pixel_sizes():
    scaling = plan_scaling((512, 256), 0.05, 0.1)
    assert scaling.working_shape == (256, 128) and scaling.factor == pytest.approx(0.5)
    assert plan_scaling((512, 256), 0.1, 0.1).resampled is False
    uncalibrated = plan_scaling((512, 256), None, 0.1)
    assert not uncalibrated.resampled and uncalibrated.calibrated is False


def test_a_pixel_size_within_the_tolerance_keeps_the_native_grid():
    # 512 px over 15 nm (0.0293 nm/px) for a 0.03 nm/px model: interpolating by 0.977 would modulate the noise
    native = plan_scaling((512, 512), 0.029297, 0.03)
    assert not native.resampled and native.calibrated and native.working_shape == (512, 512)
    assert native.grid_pixel_size_nm == 0.029297  # its own pixel size, not the model's
    assert plan_scaling((512, 512), 0.0288, 0.03).resampled  # 4 % off: resampled


def test_plan_refuses_a_working_grid_that_would_exhaust_memory():
    with pytest.raises(InputError, match=r"overview\.tif: at 0\.5 nm/px, resampling to the model's 0\.005 nm/px"):
        plan_scaling((4096, 4096), 0.5, 0.005, "overview.tif")


def test_labels_survive_a_round_trip_exactly_when_upsampled():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    scaling = plan_scaling((3, 4), 0.2, 0.1)  # 2x more working pixels
    working = to_working_labels(labels, scaling)
    assert working.shape == (6, 8) and set(np.unique(working)) == set(range(12))
    np.testing.assert_array_equal(labels_to_original(working, scaling), labels)


def test_image_resampling_keeps_the_mean_and_shape():
    image = np.random.default_rng(0).normal(100, 5, (200, 300)).astype(np.float32)
    scaling = plan_scaling(image.shape, 0.03, 0.1)
    working = to_working(image, scaling)
    assert working.shape == (60, 90) and working.dtype == np.float32
    assert abs(working.mean() - 100) < 0.5 and working.std() < 5  # anti-aliased: less noise


@settings(max_examples=50, deadline=None)
@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.integers(8, 300), st.integers(8, 300))
def test_points_round_trip(pixel_size_nm, working_nm, height, width):
    scaling = plan_scaling((height, width), pixel_size_nm, working_nm)
    points = np.array([[0.0, 0.0], [height - 1.0, width - 1.0], [height / 3, width / 2]])
    np.testing.assert_allclose(points_to_original(points_to_working(points, scaling), scaling), points, atol=1e-9)


def test_pixel_centres_map_onto_pixel_centres():
    scaling = plan_scaling((10, 10), 0.2, 0.1)  # 20 x 20 working pixels
    # original pixel 0 covers working pixels 0 and 1: its centre is at working 0.5
    np.testing.assert_allclose(points_to_working([[0.0, 0.0]], scaling), [[0.5, 0.5]])
