"""Burned-in scale bars: find the bar, measure it, read its label, and mask both out.

Exported micrographs (JPEG, PNG, TIFF written by a viewer) often carry no calibration in
their metadata but a scale bar drawn into the pixels: a long, thin, uniform rectangle at
the frame's extreme grey level near an edge, with a text label (``5 nm``, ``500 pm``,
``1 µm``) beside it. :func:`find_scale_bar` finds it without any model:

1. candidates are the pixels within ``LEVEL_TOLERANCE`` of the frame's darkest or
   brightest level (bars are drawn pure black or white), inside the outer
   ``EDGE_BAND`` of the frame's height;
2. a bar is a connected region of them whose bounding box it fills (``MIN_FILL``),
   at least ``MIN_ASPECT`` times longer than thick and ``MIN_LENGTH_FRACTION`` of the
   frame wide, standing out from a ring around it (a bar drawn over the image or on a
   panel of the other polarity; a saturated patch of the specimen is not a rectangle);
3. its length is measured to a fraction of a pixel from the intensity profile along
   it (anti-aliased or JPEG-blurred ends count by the fraction of the bar they hold);
4. its label is the other pixels of the bar's level within a few bar heights above or
   below it.

:func:`read_label` reads the label with Tesseract (``pip install pytesseract`` and the
``tesseract`` program; the ``ocr`` extra) where it is installed and says what is
missing where it is not. :func:`apply_scale_bar` does all of it to micrographs that have
no pixel size: a read label, or the length a user gives for the batch
(``--scale-bar-nm 5``), sets ``pixel_size_nm`` with the source ``scale bar``; in every
micrograph where a bar is found, the bar and its label are painted over with the
surrounding grey level (so neither priors nor segmenter see them), and
``metadata["scale_bar"]`` records what was found.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.interfaces import PIXEL_SIZE_RANGE_NM, Micrograph

log = logging.getLogger(__name__)

#: candidates: within this fraction of the grey range of the darkest or brightest level
LEVEL_TOLERANCE = 0.08
#: label pixels this far from the bar's level (share of the frame's range) count as ground, not ink
LABEL_CONTRAST = 0.35
#: bars are searched in this fraction of the height at the top and the bottom of the frame
EDGE_BAND = 0.3
#: a bar fills at least this share of its bounding box
MIN_FILL = 0.85
#: ... is at least this many times longer than thick
MIN_ASPECT = 5.0
#: ... and spans at least this share of the frame's width (and at least MIN_LENGTH_PX)
MIN_LENGTH_FRACTION = 0.04
MIN_LENGTH_PX = 16
#: ... but not more than this share (a frame border or a panel's edge is not a bar)
MAX_LENGTH_FRACTION = 0.7
#: at most this share of the ring around the bar may be at the bar's own level
MAX_RING_SHARE = 0.3
#: the label is searched within this many bar heights (at least LABEL_MIN_REACH_PX) of the bar
LABEL_REACH = 6.0
LABEL_MIN_REACH_PX = 12
#: painted-over margin around the bar and the label, in pixels
MASK_MARGIN_PX = 3

#: nanometres per unit of a label
UNITS_NM = {"pm": 1e-3, "å": 0.1, "a": 0.1, "nm": 1.0, "µm": 1e3, "μm": 1e3, "um": 1e3, "mm": 1e6}
_LABEL = re.compile(r"(\d+(?:[.,]\d+)?)\s*(pm|Å|A|nm|µm|μm|um|mm)(?![a-z])", re.IGNORECASE)


@dataclasses.dataclass
class ScaleBar:
    """A scale bar found in a frame: its box ``(row0, col0, row1, col1)`` (end exclusive), its
    length in pixels (sub-pixel), its polarity, the label's box (or ``None``) and the label's text
    and length in nm once read."""

    box: tuple[int, int, int, int]
    length_px: float
    bright: bool
    label_box: tuple[int, int, int, int] | None = None
    label_text: str | None = None
    label_nm: float | None = None

    def mask(self, shape: tuple[int, int], margin_px: int = MASK_MARGIN_PX) -> np.ndarray:
        """The bar and its label, with a margin, as a boolean image of ``shape``."""
        mask = np.zeros(shape, bool)
        for box in (self.box, self.label_box):
            if box is not None:
                r0, c0, r1, c1 = box
                mask[max(0, r0 - margin_px):r1 + margin_px, max(0, c0 - margin_px):c1 + margin_px] = True
        return mask

    def as_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "length_px": round(self.length_px, 2), "bright": self.bright,
                "label_box": list(self.label_box) if self.label_box else None, "label_text": self.label_text,
                "label_nm": self.label_nm}


#: letters an OCR engine reads for digits in a label such as "10 nm" ("1O nm", "l0 nm")
_DIGIT_LOOKALIKES = str.maketrans({"O": "0", "o": "0", "D": "0", "Q": "0", "l": "1", "I": "1", "|": "1", "i": "1",
                                   "S": "5", "B": "8", "Z": "2"})
_NUMBER_BEFORE_UNIT = re.compile(r"([0-9OoDQlI|iSBZ][0-9OoDQlI|iSBZ.,]*)(\s*)(pm|Å|A|nm|µm|μm|um|mm)(?![a-z])")


def _ocr_digits(text: str) -> str:
    """Read look-alike letters as digits where a number must stand, before a unit."""
    def fix(match: re.Match) -> str:
        number = match.group(1)
        if not any(ch.isdigit() for ch in number) and len(number) > 1:
            return match.group(0)  # a word, not a misread number
        number = number.translate(_DIGIT_LOOKALIKES)
        if re.fullmatch(r"0\d+", number):  # "05 nm": a lost decimal point, labels never pad with zeros
            number = "0." + number[1:]
        return number + match.group(2) + match.group(3)
    return _NUMBER_BEFORE_UNIT.sub(fix, text)


def parse_label(text: str) -> float | None:
    """The length in nm a scale-bar label states (``'10 nm'`` -> 10, ``'500 pm'`` -> 0.5), else ``None``."""
    found = _LABEL.search(_ocr_digits(text.replace("\n", " ")))
    if not found:
        return None
    value = float(found.group(1).replace(",", "."))
    unit = found.group(2)
    factor = UNITS_NM.get(unit.lower())
    return value * factor if value > 0 and factor else None


def find_scale_bar(image: np.ndarray) -> ScaleBar | None:
    """The most bar-like horizontal scale bar near the top or bottom edge, or ``None``."""
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    if image.ndim != 2 or min(image.shape) < 32 or not np.isfinite(image).all():
        return None
    height, width = image.shape
    low, high = float(image.min()), float(image.max())
    span = high - low
    if span <= 0:
        return None
    band = np.zeros(image.shape, bool)
    edge = max(1, int(round(EDGE_BAND * height)))
    band[:edge] = band[-edge:] = True
    best: ScaleBar | None = None
    for bright in (True, False):
        level = high if bright else low
        at_level = np.abs(image - level) <= LEVEL_TOLERANCE * span
        regions, count = ndimage.label(at_level & band)
        if count == 0:
            continue
        for index, found in enumerate(ndimage.find_objects(regions), 1):
            rows, cols = found
            thick, long = rows.stop - rows.start, cols.stop - cols.start
            if not (max(MIN_LENGTH_PX, MIN_LENGTH_FRACTION * width) <= long <= MAX_LENGTH_FRACTION * width):
                continue
            if long < MIN_ASPECT * thick:
                continue
            if np.count_nonzero(regions[found] == index) < MIN_FILL * thick * long:
                continue
            ring = _ring(at_level.shape, (rows.start, cols.start, rows.stop, cols.stop), 2)
            if ring.any() and at_level[ring].mean() > MAX_RING_SHARE:
                continue
            box = (rows.start, cols.start, rows.stop, cols.stop)
            candidate = ScaleBar(box=box, length_px=_length_px(image, box, level, ring), bright=bright)
            if best is None or candidate.length_px > best.length_px:
                best = candidate
    if best is not None:
        best.label_box = _label_box(image, best, LEVEL_TOLERANCE * span, high if best.bright else low)
    return best


def _ring(shape: tuple[int, int], box: tuple[int, int, int, int], width: int) -> np.ndarray:
    r0, c0, r1, c1 = box
    ring = np.zeros(shape, bool)
    ring[max(0, r0 - width):r1 + width, max(0, c0 - width):c1 + width] = True
    ring[r0:r1, c0:c1] = False
    return ring


def _length_px(image: np.ndarray, box: tuple[int, int, int, int], level: float, ring: np.ndarray) -> float:
    """The bar's length from its profile: each column counts by the fraction of the bar's level it
    reaches over the surroundings, so blurred or anti-aliased ends count in part."""
    r0, c0, r1, c1 = box
    background = float(np.median(image[ring])) if ring.any() else float(np.median(image))
    if level == background:
        return float(c1 - c0)
    thick = r1 - r0
    core = slice(r0 + thick // 4, max(r0 + thick // 4 + 1, r1 - thick // 4))  # rows inside the bar
    reach = max(2, thick)
    lo, hi = max(0, c0 - reach), min(image.shape[1], c1 + reach)
    profile = image[core, lo:hi].mean(axis=0)
    fraction = np.minimum((profile - background) / (level - background), 1.0)  # noise beside the bar cancels
    return float(fraction.sum())


def _label_box(image: np.ndarray, bar: ScaleBar, tolerance: float, level: float) -> tuple[int, int, int, int] | None:
    """The bounding box of the label's strokes: pixels at the bar's level near it, the bar excluded."""
    r0, c0, r1, c1 = bar.box
    reach = int(max(LABEL_MIN_REACH_PX, LABEL_REACH * (r1 - r0)))
    half = (c1 - c0) // 2
    window = (max(0, r0 - reach), max(0, c0 - half), min(image.shape[0], r1 + reach), min(image.shape[1], c1 + half))
    wr0, wc0, wr1, wc1 = window
    strokes = np.abs(image[wr0:wr1, wc0:wc1] - level) <= tolerance
    strokes[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0] = False
    if np.count_nonzero(strokes) < 4:
        return None
    rows, cols = np.nonzero(strokes)
    return (wr0 + int(rows.min()), wc0 + int(cols.min()), wr0 + int(rows.max()) + 1, wc0 + int(cols.max()) + 1)


# --------------------------------------------------------------------------- OCR

def ocr_engine() -> tuple[Callable[[np.ndarray], str] | None, str]:
    """Tesseract through pytesseract, or ``None`` and what is missing."""
    try:
        import pytesseract
    except ImportError:
        return None, "pytesseract is not installed (pip install 'emcopilot[ocr]', and the tesseract program)"
    try:
        pytesseract.get_tesseract_version()
    except Exception:  # pytesseract raises its own TesseractNotFoundError, or OSError
        return None, "the tesseract program is not installed or not on PATH"

    def read(crop: np.ndarray) -> str:
        return pytesseract.image_to_string(crop, config="--psm 7")
    return read, "tesseract"


def read_label(image: np.ndarray, bar: ScaleBar,
               engine: Callable[[np.ndarray], str] | None = None) -> tuple[float | None, str]:
    """The bar's label in nm (or ``None``) and the text read, or why nothing was read."""
    if bar.label_box is None:
        return None, "no label beside the bar"
    if engine is None:
        engine, why = ocr_engine()
        if engine is None:
            return None, why
    r0, c0, r1, c1 = bar.label_box
    pad = 4
    image = np.asarray(image, np.float32)
    low, high = float(image.min()), float(image.max())
    crop = image[max(0, r0 - pad):r1 + pad, max(0, c0 - pad):c1 + pad]
    # the label is drawn at the bar's level: those pixels become black text on white, everything
    # else (the support's texture round the letters) white, which Tesseract reads far better
    level = high if bar.bright else low
    distance = np.abs(crop - level) / max(high - low, 1e-12)  # 0 at the label's level
    grey = (np.clip(distance / LABEL_CONTRAST, 0, 1) * 255).astype(np.uint8)  # anti-aliased edges stay grey
    grey = np.pad(_enlarge(grey, 3), 12, constant_values=255)  # small labels read better enlarged
    text = ""
    for attempt in (grey, _thicken(grey)):
        text = engine(attempt).strip()
        value = parse_label(text)
        if value is not None:
            return value, text
    return None, text


def _enlarge(grey: np.ndarray, factor: int) -> np.ndarray:
    from scipy import ndimage
    return np.clip(ndimage.zoom(grey.astype(np.float32), factor, order=1), 0, 255).astype(np.uint8)


def _thicken(grey: np.ndarray) -> np.ndarray:
    """Thin anti-aliased strokes, one pixel bolder: a second chance for the OCR."""
    from scipy import ndimage
    return ndimage.grey_erosion(grey, size=(3, 3))


# --------------------------------------------------------------------------- micrographs

def apply_scale_bar(micrographs: Sequence[Micrograph], label: str, scale_bar_nm: float | None = None,
                    engine: Callable[[np.ndarray], str] | None = None) -> None:
    """Find, mask and (where the frame has no pixel size) use each frame's scale bar, in place.

    ``scale_bar_nm`` is the bar's length for a batch whose bars share one length; otherwise the
    label is read by ``engine`` (default :func:`ocr_engine`). A frame with a pixel size keeps it
    (its bar is still masked out).
    """
    if scale_bar_nm is not None and not (np.isfinite(scale_bar_nm) and scale_bar_nm > 0):
        raise InputError(f"--scale-bar-nm must be a positive length in nm, got {scale_bar_nm!r}")
    for micrograph in micrographs:
        bar = find_scale_bar(micrograph.data)
        if bar is None:
            if scale_bar_nm is not None and micrograph.pixel_size_nm is None:
                log.warning("%s: --scale-bar-nm given but no scale bar was found in %s", label, micrograph.name)
            continue
        record = bar.as_dict()
        if micrograph.pixel_size_nm is None:
            if scale_bar_nm is not None:
                length_nm, how = scale_bar_nm, "--scale-bar-nm"
            else:
                length_nm, how = read_label(micrograph.data, bar, engine)
                bar.label_nm = length_nm
                if length_nm is None:
                    log.warning("%s: a scale bar of %.1f px was found in %s but its label was not read (%s); "
                                "give --scale-bar-nm with its length", label, bar.length_px, micrograph.name, how)
                else:
                    bar.label_text, how = how, "label"
            size = float(length_nm) / bar.length_px if length_nm is not None else None
            if size is not None and not PIXEL_SIZE_RANGE_NM[0] <= size <= PIXEL_SIZE_RANGE_NM[1]:
                log.warning("%s: the scale bar in %s (%.1f px = %g nm) gives %.4g nm/px, outside %g-%g nm/px; "
                            "not used", label, micrograph.name, bar.length_px, length_nm, size, *PIXEL_SIZE_RANGE_NM)
                size = None
            if size is not None:
                micrograph.pixel_size_nm = size
                micrograph.metadata["pixel_size_source"] = "scale bar"
                log.info("%s: scale bar of %.1f px = %g nm (%s) -> %.4g nm/px", micrograph.name, bar.length_px,
                         length_nm, how, micrograph.pixel_size_nm)
            record = {**bar.as_dict(), "length_nm": length_nm, "length_from": how}
        micrograph.data = paint_over(micrograph.data, bar.mask(micrograph.shape))
        micrograph.metadata["scale_bar"] = record


def paint_over(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with the ``mask`` pixels set to the median of a ring around them (a copy)."""
    from scipy import ndimage

    if not mask.any():
        return image
    ring = ndimage.binary_dilation(mask, iterations=4) & ~mask
    out = np.array(image, copy=True)
    out[mask] = np.median(image[ring]) if ring.any() else np.median(image[~mask])
    return out
