"""The particle table and the files written from it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.core.errors import InputError
from emcopilot.analysis.measure import columns, mask_file_name, particle_table, write_outputs


def two_objects():
    labels = np.zeros((40, 60), np.int32)
    rows, cols = np.mgrid[:40, :60]
    labels[((rows - 20) ** 2 + (cols - 20) ** 2) <= 8 ** 2] = 1   # disk r=8 at (20, 20)
    labels[0:6, 50:60] = 2                                        # rectangle on the top edge
    image = np.where(labels == 1, 5.0, np.where(labels == 2, 3.0, 1.0)).astype(np.float32)
    return labels, image


def test_columns_in_contract_order_with_and_without_calibration():
    labels, image = two_objects()
    calibrated = particle_table(Instances(labels=labels), Micrograph(image, pixel_size_nm=0.5, name="a.tif"))
    assert list(calibrated.columns) == columns(True) == [
        "image", "id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area_px", "eq_diameter_px",
        "x_nm", "y_nm", "area_nm2", "eq_diameter_nm",
        "eccentricity", "circularity", "solidity", "mean_intensity", "touches_edge",
        "perimeter_px", "feret_px", "min_feret_px", "major_axis_px", "minor_axis_px",
        "perimeter_nm", "feret_nm", "min_feret_nm", "major_axis_nm", "minor_axis_nm",
        "orientation_deg", "aspect_ratio", "small_for_shape",
        "pixel_size_nm", "pixel_size_source"]
    assert (calibrated["pixel_size_nm"] == 0.5).all() and (calibrated["pixel_size_source"] == "file").all()
    plain = particle_table(Instances(labels=labels), Micrograph(image, name="a.png"))
    assert list(plain.columns) == columns(False) and "x_nm" not in plain and "pixel_size_source" not in plain
    estimated = particle_table(Instances(labels=labels), Micrograph(image, name="a.png"), pixel_size_nm=0.3)
    assert (estimated["pixel_size_source"] == "estimated").all() and (estimated["pixel_size_nm"] == 0.3).all()
    given = Micrograph(image, pixel_size_nm=0.2, name="a.png", metadata={"pixel_size_source": "calibration table"})
    assert (particle_table(Instances(labels=labels), given)["pixel_size_source"] == "calibration table").all()


def test_values_of_a_disk_and_an_edge_rectangle():
    labels, image = two_objects()
    table = particle_table(Instances(labels=labels), Micrograph(image, pixel_size_nm=0.5, name="a.tif"))
    disk, rect = table.iloc[0], table.iloc[1]
    assert (disk["x"], disk["y"]) == pytest.approx((20, 20))
    assert (disk["bbox_x0"], disk["bbox_y0"], disk["bbox_x1"], disk["bbox_y1"]) == (12, 12, 29, 29)
    assert disk["eq_diameter_px"] == pytest.approx(16, rel=0.03)
    assert disk["eq_diameter_nm"] == pytest.approx(disk["eq_diameter_px"] * 0.5)
    assert disk["area_nm2"] == pytest.approx(disk["area_px"] * 0.25)
    assert disk["circularity"] > 0.85 and disk["solidity"] > 0.9 and disk["eccentricity"] < 0.2
    assert disk["mean_intensity"] == 5.0 and not disk["touches_edge"]
    assert rect["area_px"] == 60 and rect["mean_intensity"] == 3.0 and rect["touches_edge"]
    assert rect["eccentricity"] > 0.5
    assert (table["image"] == "a.tif").all() and list(table["id"]) == [1, 2]


def test_points_are_rows_with_their_disks_or_nan():
    image = np.ones((30, 30), np.float32)
    image[10, 12] = 9.0
    points = np.array([[10.2, 12.4], [25.0, 3.0]])
    labels = np.zeros((30, 30), np.int32)
    labels[9:12, 11:14] = 1                 # disk of point 0 only
    table = particle_table(Instances(labels=labels, points=points), Micrograph(image, pixel_size_nm=0.03))
    assert len(table) == 2
    assert (table.loc[0, "x"], table.loc[0, "y"]) == (12.4, 10.2)  # the point itself, x = column
    assert table.loc[0, "area_px"] == 9
    assert np.isnan(table.loc[1, "area_px"]) and np.isnan(table.loc[1, "eq_diameter_nm"])
    assert table.loc[1, "mean_intensity"] == 1.0 and table.loc[1, "bbox_x0"] == 3
    only_points = particle_table(Instances(points=points), Micrograph(image))
    assert len(only_points) == 2 and only_points["area_px"].isna().all()


def test_empty_instances_give_an_empty_table_with_the_columns():
    table = particle_table(Instances(labels=np.zeros((8, 8), np.int32)), Micrograph(np.zeros((8, 8)), 0.1))
    assert len(table) == 0 and list(table.columns) == columns(True)


def test_override_pixel_size_and_shape_mismatch():
    labels, image = two_objects()
    table = particle_table(Instances(labels=labels), Micrograph(image), pixel_size_nm=2.0)
    assert table.loc[0, "x_nm"] == pytest.approx(40)
    with pytest.raises(InputError, match="does not match"):
        particle_table(Instances(labels=labels[:10]), Micrograph(image))


def test_write_outputs_atomically(tmp_path):
    import tifffile

    labels, image = two_objects()
    micrographs = [Micrograph(image, pixel_size_nm=0.5, name="a b.tif"),
                   Micrograph(image, name="c.png")]
    instances = [Instances(labels=labels), Instances(points=np.array([[3.0, 4.0]]))]
    table = write_outputs(tmp_path, micrographs, instances)
    assert len(table) == 3
    read = pd.read_csv(tmp_path / "particles.csv")
    assert list(read["image"]) == ["a b.tif", "a b.tif", "c.png"]
    assert pd.read_parquet(tmp_path / "particles.parquet").shape == table.shape
    mask = tifffile.imread(tmp_path / "masks" / mask_file_name("a b.tif"))
    assert mask_file_name("a b.tif").startswith("a_b.tif-") and (mask == labels).all()
    assert mask_file_name("c.png") == "c.png.tif"
    names = ["a b.png", "a_b.png", "A/x.png", "A_x.png", "A/x.png#1"]
    assert len({mask_file_name(name) for name in names}) == len(names)
    assert not tifffile.imread(tmp_path / "masks" / "c.png.tif").any()
    assert not [p for p in tmp_path.rglob("*.part")]


def test_fiji_columns_agree_with_regionprops_and_the_geometry():
    from skimage.draw import ellipse
    from skimage.measure import regionprops_table

    labels = np.zeros((120, 160), np.int32)
    rows, cols = ellipse(60, 60, 10, 30, rotation=np.deg2rad(30))  # long axis 30 degrees up to the right
    labels[rows, cols] = 1
    labels[10:13, 110:140] = 2                                       # a 3 x 30 bar along x
    labels[100, 150] = 3                                             # one pixel
    image = np.ones(labels.shape, np.float32)
    table = particle_table(Instances(labels=labels), Micrograph(image, pixel_size_nm=0.25, name="a.tif"))
    props = regionprops_table(labels, properties=("perimeter", "axis_major_length", "axis_minor_length",
                                                  "feret_diameter_max"))
    np.testing.assert_allclose(table["perimeter_px"], props["perimeter"])
    np.testing.assert_allclose(table["major_axis_px"], props["axis_major_length"])
    np.testing.assert_allclose(table["minor_axis_px"], props["axis_minor_length"])
    # skimage's Feret is taken on a contour of the hull image, Fiji's (and ours) on the pixels' outline
    np.testing.assert_allclose(table["feret_px"], props["feret_diameter_max"], atol=1.5)
    ellipse_row, bar, dot = (table.iloc[i] for i in range(3))
    assert ellipse_row["orientation_deg"] == pytest.approx(30, abs=1.5)
    assert ellipse_row["aspect_ratio"] == pytest.approx(3, rel=0.05)
    assert ellipse_row["feret_px"] == pytest.approx(61, abs=1.5) and ellipse_row["min_feret_px"] == pytest.approx(21, abs=1.5)
    assert bar["feret_px"] == pytest.approx(np.hypot(30, 3)) and bar["min_feret_px"] == pytest.approx(3)
    assert bar["orientation_deg"] in (0.0, pytest.approx(180.0))
    assert (dot["feret_px"], dot["min_feret_px"]) == (pytest.approx(np.sqrt(2)), pytest.approx(1.0))
    for length in ("perimeter", "feret", "min_feret", "major_axis", "minor_axis"):
        np.testing.assert_allclose(table[f"{length}_nm"], table[f"{length}_px"] * 0.25)
    assert list(table["small_for_shape"]) == [False, False, True]
    assert table.loc[2, "circularity"] != 1.0 or np.isnan(table.loc[2, "circularity"])  # not clipped to 1


def test_masks_open_at_scale_in_fiji(tmp_path):
    import tifffile

    labels, image = two_objects()
    write_outputs(tmp_path, [Micrograph(image, pixel_size_nm=0.5, name="a.tif"), Micrograph(image, name="b.png")],
                  [Instances(labels=labels), Instances(labels=labels)])
    with tifffile.TiffFile(tmp_path / "masks" / mask_file_name("a.tif")) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
        page = tif.pages[0]
        numerator, denominator = page.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(2.0)  # pixels per nm
        assert page.dtype == np.uint16 and (page.asarray() == labels).all()
    with tifffile.TiffFile(tmp_path / "masks" / mask_file_name("b.png")) as tif:
        assert "unit" not in (tif.imagej_metadata or {})  # no pixel size: an uncalibrated mask
