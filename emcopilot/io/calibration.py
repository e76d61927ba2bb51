"""Per-file pixel sizes for mixed batches: ``--calibration table.csv``.

A calibration table is a CSV file with a header and two columns::

    image,pixel_size_nm
    overview_01.jpg,0.412
    session2/hr_07.tif,0.0293

``image`` is a file name, or a path as given on the command line (relative to
the working directory); a row names one input file, and every frame of that
file takes its pixel size. A table entry wins over the file's own calibration
and over ``--pixel-size-nm``: it is the user saying what the scale is. Where a
pixel size came from is recorded with each micrograph
(``metadata["pixel_size_source"]``): ``file``, ``--pixel-size-nm``,
``calibration table``, ``scale bar`` (a bar burned into an exported image, see
:mod:`emcopilot.io.scale_bar`) or, for an uncalibrated image the loop had to guess,
``estimated``.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError

#: The sources a pixel size can have, in the order they are tried.
SOURCES = ("calibration table", "--pixel-size-nm", "file", "scale bar", "estimated")
#: A calibration table larger than this is refused (it is a list of files, not data).
MAX_TABLE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CalibrationTable:
    """Pixel sizes (nm/px) by file name or path, read from a CSV file."""

    entries: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def pixel_size_for(self, path: str | os.PathLike) -> float | None:
        """The table's pixel size for an input file (its path as given, else its name), or ``None``."""
        path = Path(path)
        for key in (str(path), os.path.normpath(path), path.name):
            if key in self.entries:
                return self.entries[key]
        return None

    def unused(self, paths) -> list[str]:
        """Entries that match none of ``paths`` (most often a misspelt file name)."""
        matched = set()
        for path in paths:
            path = Path(path)
            matched.update({str(path), os.path.normpath(path), path.name})
        return sorted(key for key in self.entries if key not in matched)

    def as_dict(self) -> dict:
        return {"source": self.source, "entries": dict(sorted(self.entries.items()))}


def read_calibration_table(path: str | os.PathLike) -> CalibrationTable:
    """Read a calibration table; every problem is an :class:`InputError` naming the file and line."""
    path = Path(path)
    label = str(path)
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise InputError(f"{label}: a calibration table of more than {MAX_TABLE_BYTES // 2**20} MiB; "
                             "it should list one file per line")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{label}: no such calibration table") from None
    except UnicodeDecodeError:
        raise InputError(f"{label}: the calibration table is not UTF-8 text") from None
    except OSError as error:
        raise InputError(f"{label}: cannot read the calibration table: {error.strerror or error}") from None
    rows = csv.reader(text.splitlines())
    header = [cell.strip() for cell in next(rows, [])]
    if header[:2] != ["image", "pixel_size_nm"]:
        raise InputError(f"{label}:1: a calibration table starts with the header 'image,pixel_size_nm' "
                         f"(found {','.join(header) or 'nothing'})")
    entries: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise InputError(f"{label}:{line}: expected 'image,pixel_size_nm', got {','.join(row)!r}")
        image, value = row[0].strip(), row[1].strip()
        try:
            pixel_size_nm = float(value)
        except ValueError:
            raise InputError(f"{label}:{line}: pixel_size_nm {value!r} of {image!r} is not a number") from None
        if not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise InputError(f"{label}:{line}: pixel_size_nm of {image!r} must be a positive number of nm, "
                             f"got {value}")
        if image in entries and entries[image] != pixel_size_nm:
            raise InputError(f"{label}:{line}: {image!r} is listed twice with different pixel sizes "
                             f"({entries[image]} and {pixel_size_nm} nm)")
        entries[image] = pixel_size_nm
    if not entries:
        raise InputError(f"{label}: the calibration table lists no image")
    return CalibrationTable(entries, source=label)
