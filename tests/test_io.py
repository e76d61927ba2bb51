"""Micrograph readers: calibration, units, colour, stacks, and bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emcopilot import Micrograph, ReadError
from emcopilot.core.interfaces import InputError
from emcopilot.io.readers import expand_inputs, read_micrograph, read_micrographs, to_nm

# pixel sizes of the format examples (nm/px), to 4 significant digits
FORMAT_PIXEL_SIZES_NM = {
    "particlespy/jeol_haadf.dm4": [1.2490],
    "particlespy/sio2_haadf.hspy": [8.5524],
    "rosettasciio/test_STEM_image.dm3": [0.2485],
    "rosettasciio/HAADFscan.mrc": [5.679],
    "rosettasciio/fei_example_tem_stack.emd": [0.008173, 0.008173],
    "rosettasciio/64x64_TEM_images_acquire.emi": [6.282],
    "rosettasciio/64x64_TEM_images_acquire_1.ser": [6.282],
}


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", sorted(FORMAT_PIXEL_SIZES_NM))
def test_format_examples_read_with_calibration(shared_data, relative):
    micrographs = read_micrograph(shared_data / "formats" / relative)
    sizes = [m.pixel_size_nm for m in micrographs]
    expected = FORMAT_PIXEL_SIZES_NM[relative]
    assert len(sizes) == len(expected)
    for got, want in zip(sizes, expected):
        assert got == pytest.approx(want, rel=5e-4), (relative, got)  # 4 significant digits
    for micrograph in micrographs:
        assert micrograph.data.dtype == np.float32 and micrograph.data.ndim == 2


@pytest.mark.shared_data
def test_stack_frames_are_named(shared_data):
    names = [m.name for m in read_micrograph(shared_data / "formats/rosettasciio/fei_example_tem_stack.emd")]
    assert names == ["fei_example_tem_stack.emd#0", "fei_example_tem_stack.emd#1"]


@pytest.mark.shared_data
def test_acstem_tiff_and_ardagen_jpeg(shared_data):
    [tif] = read_micrograph(next((shared_data / "acstem-dev/images").glob("*.tif")))
    assert tif.shape == (512, 512) and float(f"{tif.pixel_size_nm:.5g}") == 0.029297
    [jpg] = read_micrograph(shared_data / "ardagen-dev/images/Cu1.jpg")
    assert jpg.pixel_size_nm is None and jpg.data.ndim == 2
    [override] = read_micrograph(shared_data / "ardagen-dev/images/Cu1.jpg", pixel_size_nm=0.25)
    assert override.pixel_size_nm == 0.25 and override.metadata["pixel_size_override"]


@pytest.mark.shared_data
def test_directory_skips_emi_when_ser_present(shared_data):
    names = [p.name for p in expand_inputs([shared_data / "formats/rosettasciio"])]
    assert "64x64_TEM_images_acquire_1.ser" in names
    assert "64x64_TEM_images_acquire.emi" not in names


def test_directory_names_files_no_reader_takes(tmp_path, caplog):
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "notes.txt").write_text("dose 20 e/A2")
    (tmp_path / "frame.npy").write_bytes(b"")
    (tmp_path / ".DS_Store").write_bytes(b"")
    with caplog.at_level("WARNING", logger="emcopilot.io.readers"):
        assert [p.name for p in expand_inputs([tmp_path])] == ["a.png"]
    [warning] = [r.getMessage() for r in caplog.records]
    assert "skipped 2 file(s)" in warning and "frame.npy, notes.txt" in warning and ".DS_Store" not in warning


@pytest.mark.parametrize("value, unit, nm", [(1, "nm", 1.0), (2, "Å", 0.2), (3, "A", 0.3), (500, "pm", 0.5),
                                             (0.01, "µm", 10.0), (0.01, "um", 10.0), (1e-9, "m", 1.0)])
def test_unit_conversion(value, unit, nm):
    assert to_nm(value, unit) == pytest.approx(nm)


def test_unit_conversion_rejects_non_lengths():
    assert to_nm(1.0, "1/nm") is None and to_nm(1.0, "s") is None and to_nm(1.0, None) is None


def test_rgb_png_becomes_grey(tmp_path):
    import imageio.v3 as iio
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 1] = 200
    iio.imwrite(tmp_path / "c.png", rgb)
    [micrograph] = read_micrograph(tmp_path / "c.png")
    assert micrograph.shape == (8, 9)
    assert micrograph.data.mean() == pytest.approx(0.587 * 200, rel=1e-3)


def test_tiff_stack_and_calibration_roundtrip(tmp_path):
    import tifffile
    stack = np.random.default_rng(0).integers(0, 1000, (3, 16, 20)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    micrographs = read_micrograph(tmp_path / "s.tif")
    assert [m.name for m in micrographs] == ["s.tif#0", "s.tif#1", "s.tif#2"]
    np.testing.assert_array_equal(micrographs[2].data, stack[2])


def test_non_square_pixels_warn_and_use_mean(tmp_path):
    from rsciio import tiff
    axes = [{"name": "y", "scale": 0.3, "units": "nm", "size": 10, "offset": 0, "navigate": False},
            {"name": "x", "scale": 0.2, "units": "nm", "size": 10, "offset": 0, "navigate": False}]
    tiff.file_writer(str(tmp_path / "ns.tif"), {"data": np.ones((10, 10), np.uint16), "axes": axes,
                                                "metadata": {}, "original_metadata": {}})
    with pytest.warns(UserWarning, match="non-square pixels"):
        [micrograph] = read_micrograph(tmp_path / "ns.tif")
    assert micrograph.pixel_size_nm == pytest.approx(0.25)
    assert micrograph.metadata["calibration"]["non_square_pixels_nm"] == pytest.approx([0.2, 0.3])


@pytest.mark.parametrize("name, content, reason", [
    ("empty.dm4", b"", "empty"),
    ("corrupt.dm4", b"not a dm4 file at all" * 10, "rsciio.digitalmicrograph could not read"),
    ("corrupt.emd", b"\x89HDF garbage" * 10, "rsciio.emd could not read"),
    ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "imageio could not read"),
    ("corrupt.tif", b"II*\x00" + b"\xff" * 40, "could not read"),
    ("notes.txt", b"hello", "unsupported extension"),
])
def test_bad_files_name_the_file_and_reader(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ReadError) as error:
        read_micrograph(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_truncated_png(tmp_path):
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "full.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    raw = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="cut.png"):
        read_micrograph(tmp_path / "cut.png")


@pytest.mark.parametrize("array, reason", [
    (np.full((8, 8), np.nan, np.float32), "NaN or infinite"),
    (np.where(np.eye(8) > 0, np.inf, 1.0).astype(np.float32), "8 of 64 pixels are NaN"),
    (np.ones((1, 1), np.float32), "need at least 2x2"),
    (np.ones((8, 8), np.complex64), "complex"),
])
def test_bad_pixels(tmp_path, array, reason):
    import tifffile
    tifffile.imwrite(tmp_path / "bad.tif", array)
    with pytest.raises(ReadError, match=reason):
        read_micrograph(tmp_path / "bad.tif")


def test_batch_collects_errors_and_continues(tmp_path):
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "b.png").write_bytes(b"")
    errors = []
    micrographs = read_micrographs([tmp_path], errors=errors)
    assert [m.name for m in micrographs] == ["a.png"]
    assert [path.name for path, _ in errors] == ["b.png"]
    with pytest.raises(ReadError):
        read_micrographs([tmp_path])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ReadError, match="no such file"):
        read_micrograph(tmp_path / "absent.dm4")
    with pytest.raises(ReadError, match="is a directory"):
        read_micrograph(tmp_path)


def test_pixel_size_override_is_range_checked(tmp_path):
    import imageio.v3 as iio
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ReadError, match="pixel size"):
        read_micrograph(tmp_path / "a.png", pixel_size_nm=-1.0)


def test_micrograph_validates():
    with pytest.raises(InputError, match="2-D"):
        Micrograph(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="outside"):
        Micrograph(np.zeros((2, 2)), pixel_size_nm=0.0)
    assert Micrograph(np.zeros((2, 2), bool)).data.dtype == np.float32


def _png_claiming(path, width, height):
    """A tiny PNG whose header (with a valid CRC) claims width x height pixels."""
    import struct
    import zlib
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 8))
                     + chunk(b"IEND", b""))


def test_huge_frames_are_refused_before_reading_pixels(tmp_path):
    import resource
    import tifffile
    tifffile.imwrite(tmp_path / "huge.tif", shape=(30000, 30000), dtype=np.uint16)  # sparse on disk
    _png_claiming(tmp_path / "huge.png", 30000, 30000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("huge.tif", "huge.png"):
        with pytest.raises(ReadError, match=r"exceeds the limit of 268,435,456 pixels per frame"):
            read_micrograph(tmp_path / name)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"peak memory grew by {grown_mib:.0f} MiB"


def test_symlink_loop_and_broken_link(tmp_path):
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    (tmp_path / "gone.tif").symlink_to(tmp_path / "missing.tif")
    for name in ("a.tif", "gone.tif"):
        with pytest.raises(ReadError, match="broken or looping symbolic link"):
            read_micrograph(tmp_path / name)


@pytest.mark.parametrize("array", [np.eye(6, dtype=bool), np.arange(36, dtype=np.uint64).reshape(6, 6),
                                   np.arange(36, dtype=np.int8).reshape(6, 6) - 18])
def test_unusual_integer_and_bool_pixels_become_float32(tmp_path, array):
    import tifffile
    tifffile.imwrite(tmp_path / "x.tif", array)
    [micrograph] = read_micrograph(tmp_path / "x.tif")
    assert micrograph.data.dtype == np.float32
    np.testing.assert_array_equal(micrograph.data, array.astype(np.float32))


@pytest.mark.parametrize("angstrom", ["\u00c5", "\u212b"])  # the letter and the Ångström sign
def test_both_angstrom_characters(angstrom):
    assert to_nm(5, angstrom) == pytest.approx(0.5)


def test_input_names_are_file_names_unless_two_inputs_share_one(tmp_path):
    from emcopilot.io.readers import input_names
    paths = [tmp_path / "run1" / "A" / "x.png", tmp_path / "run2" / "A" / "x.png", tmp_path / "B" / "y.png",
             tmp_path / "C" / "x.tif"]
    assert input_names(paths) == ["run1/A/x.png", "run2/A/x.png", "y.png", "x.tif"]
    assert input_names([]) == []


def test_input_names_scale_and_survive_a_file_given_twice(tmp_path):
    import time
    from emcopilot.io.readers import input_names
    same = tmp_path / "A" / "x.png"
    assert input_names([same, same]) == [same.as_posix()] * 2
    paths = [tmp_path / f"d{i % 100}" / f"f{i}.png" for i in range(20000)] + [tmp_path / "d1" / "f0.png"]
    started = time.perf_counter()
    names = input_names(paths)
    assert time.perf_counter() - started < 5.0
    assert names[1] == "f1.png" and names[0] == "d0/f0.png" and names[-1] == "d1/f0.png"


def test_folder_scans_name_what_they_skip_and_read_sub_folders_on_request(tmp_path, caplog):
    import logging

    import imageio.v3 as iio

    from emcopilot.io.readers import expand_inputs, read_micrographs

    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    iio.imwrite(tmp_path / "a.png", image)
    iio.imwrite(tmp_path / "sub" / "b.png", image)
    iio.imwrite(tmp_path / "sub" / "deeper" / "c.png", image)
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)  # a folder loop
    with caplog.at_level(logging.WARNING, logger="emcopilot.io.readers"):
        flat = expand_inputs([tmp_path])
    assert [p.name for p in flat] == ["a.png", "broken.png", "loop1", "loop2"]
    assert "skipped 1 sub-folder(s) (give --recursive to read them): sub" in caplog.text
    assert "3 link(s) lead nowhere" in caplog.text
    deep = expand_inputs([tmp_path], recursive=True)
    assert sorted(p.name for p in deep) == ["a.png", "b.png", "broken.png", "c.png", "loop1", "loop2"]
    errors = []
    assert [m.name for m in read_micrographs(flat, errors=errors)] == ["a.png"]
    assert sorted(Path(path).name for path, _ in errors) == ["broken.png", "loop1", "loop2"]
    assert all("link" in message for _, message in errors)


def test_a_frame_within_the_pixel_limit_is_not_refused_as_over_it(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def header_only_png(path, width, height):  # a PNG that claims a size and holds no pixels
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                         + chunk(b"IEND", b""))

    header_only_png(tmp_path / "within.png", 15000, 15000)  # 225 Mpx: above PIL's own guard, below ours
    with pytest.raises(ReadError) as caught:
        read_micrograph(tmp_path / "within.png")
    assert "exceeds the limit" not in str(caught.value) and "within.png" in str(caught.value)
    header_only_png(tmp_path / "over.png", 17000, 17000)
    with pytest.raises(ReadError, match=r"over.png: .*exceeds the limit of 268,435,456"):
        read_micrograph(tmp_path / "over.png")
