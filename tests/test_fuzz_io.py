"""Property-based fuzzing of the readers' metadata handling and of corrupted files."""
from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from emcopilot import ReadError
from emcopilot.io.readers import _calibration, read_micrograph, to_nm

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=6), st.sampled_from(["nm", "µm", "Å", "pm", "m", "1/nm", "<undefined>"]))
axis = st.fixed_dictionaries({}, optional={"name": anything, "scale": anything, "units": anything,
                                           "navigate": st.booleans(), "size": anything})


@SETTINGS
@given(axes=st.lists(axis, max_size=4))
def test_calibration_from_arbitrary_axes(axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            size, record = _calibration(axes, "fuzz")
        except (TypeError, ValueError):
            # scales that are not numbers: must be reported as "no calibration", never raise
            raise AssertionError(f"calibration raised on {axes!r}")
    assert size is None or (np.isfinite(size) and size > 0)
    assert isinstance(record, dict)


@SETTINGS
@given(value=anything, unit=anything)
def test_to_nm_never_raises(value, unit):
    try:
        result = to_nm(value, unit)
    except (TypeError, ValueError):
        raise AssertionError(f"to_nm raised on {value!r} {unit!r}")
    assert result is None or isinstance(result, float)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=400), suffix=st.sampled_from([".dm3", ".dm4", ".emd", ".mrc", ".ser",
                                                                          ".hspy", ".tif", ".png", ".jpg"]))
def test_random_bytes_give_read_errors(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        read_micrograph(path)
    except ReadError as error:
        assert str(path) in str(error)
