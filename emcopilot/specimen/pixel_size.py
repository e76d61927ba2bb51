"""The pixel size of an uncalibrated micrograph: the estimate, how far to trust it, and why.

An export without metadata (a JPEG, a PNG) gives no scale. :func:`estimate_pixel_size`
takes the typical object size in pixels (:mod:`emcopilot.specimen.blob_scale`) for the
recipe's typical size in nm, the geometric mean of its ``diameter_nm`` range::

    pixel size (nm/px) = sqrt(low_nm * high_nm) / typical object diameter (px)

That is enough to put the objects at the size the segmenter was trained on, but
the nm it gives are the recipe's as much as the sample's. The estimate says so
with its uncertainty, a standard deviation of ``ln(pixel size)`` summed in
quadrature from three independent sources:

- ``evidence``: how well the image pins down its typical blob (the bootstrap
  spread of the median, or of the narrowest tenth for atoms, over its blobs);
- ``estimator``: how far the estimate lands from the truth on development images
  of known scale when the objects are as large as the recipe expects
  (:data:`ESTIMATOR_LOG_SD`, the leave-one-out root-mean-square error measured by
  ``benchmarks/scale_estimate.py``);
- ``recipe``: where in its range the sample's typical size lies, which nothing in
  the image says: ``ln(high / low) / sqrt(12)``, the spread of a size anywhere in
  the range on a log scale. For ``diameter_nm: [1.5, 10]`` this alone is 0.55,
  a factor of 1.7 either way; only a calibration removes it.

An estimate is *not credible* when the image gives too little evidence: fewer than
:data:`MIN_CREDIBLE_OBJECTS` objects stand out from the texture, or their typical
size is uncertain by more than :data:`MAX_EVIDENCE_LOG_SD` on its own. The loop
still uses it as the working scale (the segmenter needs one), but no size in nm
is reported for that image: its table keeps pixels, with the reason in
``run.json`` and the report.

Numpy/scipy only; importing this module never imports torch.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .blob_scale import blob_diameters_px, typical_diameter_px
from ..core.errors import InputError
from ..core.interfaces import Micrograph

if TYPE_CHECKING:
    from ..core.recipe import Sample

log = logging.getLogger(__name__)

#: Leave-one-out root-mean-square error of ln(estimate / truth) on the development images with a
#: known scale (``benchmarks/scale_estimate.py``): particle exports by their human boxes and synthetic
#: frames at ten scales; single-atom frames with their calibration removed and synthetic ones.
ESTIMATOR_LOG_SD = {"particles": 0.16, "atoms": 0.18, "clusters": 0.16}  # clusters: as particles (no dev images)
#: An estimate rests on at least this many objects that stand out from the texture ...
MIN_CREDIBLE_OBJECTS = 5
#: ... whose typical size the image pins down to this standard deviation of its logarithm (a factor
#: of 1.35), else its sizes are not reported in nm.
MAX_EVIDENCE_LOG_SD = 0.3
#: Bootstrap resamples of the blobs for the evidence term (a fixed seed: the estimate is reproducible).
BOOTSTRAP_RESAMPLES = 200
#: The two-sided interval quoted beside the estimate: this many standard deviations (95 %).
INTERVAL_SDS = 1.96
#: Estimates kept, by image content and question, so that asking twice (the loop checks every
#: uncalibrated input before the prior extractor asks again) costs one scale space.
_RECENT: "OrderedDict[tuple, PixelSizeEstimate]" = OrderedDict()
_RECENT_SIZE = 32


@dataclass(frozen=True)
class PixelSizeEstimate:
    """An estimated pixel size with its uncertainty (standard deviations of its natural logarithm)."""

    pixel_size_nm: float
    typical_diameter_px: float
    objects: int
    log_sd: dict[str, float] = field(default_factory=dict)
    credible: bool = True
    reason: str | None = None

    @property
    def total_log_sd(self) -> float:
        return float(math.sqrt(sum(value ** 2 for value in self.log_sd.values())))

    @property
    def relative_uncertainty(self) -> float:
        """One standard deviation as a fraction of the estimate (``exp(sd) - 1``)."""
        return float(math.expm1(self.total_log_sd))

    def interval_nm(self, sds: float = INTERVAL_SDS) -> tuple[float, float]:
        factor = math.exp(sds * self.total_log_sd)
        return self.pixel_size_nm / factor, self.pixel_size_nm * factor

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval_nm()
        return {"pixel_size_nm": self.pixel_size_nm, "source": "estimated", "credible": self.credible,
                "reason": self.reason, "objects": self.objects, "typical_diameter_px": self.typical_diameter_px,
                "log_sd": {**self.log_sd, "total": self.total_log_sd},
                "relative_uncertainty": self.relative_uncertainty, "interval_95_nm": [low, high]}


def expected_diameter_nm(sample: "Sample | None", diameter_nm: Sequence[float] | None = None) -> float:
    """Typical object diameter: geometric mean of ``diameter_nm`` (else the sample's range)."""
    low, high = _range_nm(sample, diameter_nm)
    return math.sqrt(low * high)


def _range_nm(sample: "Sample | None", diameter_nm: Sequence[float] | None) -> tuple[float, float]:
    if diameter_nm is None:
        if sample is None:
            raise InputError("the expected object size is unknown: give a recipe sample with diameter_nm")
        diameter_nm = sample.diameter_nm
    low, high = (float(v) for v in diameter_nm)
    return low, high


def _evidence_log_sd(diameters_px: np.ndarray, kind: str) -> float:
    """Bootstrap standard deviation of ln(typical diameter) over the blobs."""
    if len(diameters_px) < 2:
        return math.inf
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(diameters_px), (BOOTSTRAP_RESAMPLES, len(diameters_px)))
    logs = np.log([typical_diameter_px(diameters_px[index], kind) for index in draws])
    return float(np.std(logs))


def estimate_pixel_size(micrograph: Micrograph, sample: "Sample | None", bright: bool | None = None,
                        diameter_nm: Sequence[float] | None = None) -> PixelSizeEstimate:
    """The pixel size of an uncalibrated micrograph, its uncertainty and whether its nm can be trusted.

    The blob polarity is ``sample.particle_contrast`` and the sizes the sample's ``diameter_nm``
    (``bright`` and ``diameter_nm`` override them). Raises :class:`InputError` when no object
    stands out from the image's texture.
    """
    if bright is None:
        bright = sample is None or sample.particle_contrast != "dark"
    kind = getattr(sample, "kind", None) or "particles"
    kind = kind if kind in ("atoms", "clusters") else "particles"
    low, high = _range_nm(sample, diameter_nm)
    data = np.ascontiguousarray(micrograph.data)
    key = (hashlib.sha1(data.view(np.uint8)).hexdigest(), data.shape, str(data.dtype), bool(bright), kind, low, high)
    if key in _RECENT:
        _RECENT.move_to_end(key)
        return _RECENT[key]
    diameters = blob_diameters_px(data, bright=bright, kind=kind)
    typical_px = typical_diameter_px(diameters, kind)
    evidence = _evidence_log_sd(diameters, kind)
    log_sd = {"evidence": evidence, "estimator": ESTIMATOR_LOG_SD[kind],
              "recipe": math.log(high / low) / math.sqrt(12)}
    reason = None
    if len(diameters) < MIN_CREDIBLE_OBJECTS:
        reason = (f"only {len(diameters)} object(s) stand out from the support's texture "
                  f"(at least {MIN_CREDIBLE_OBJECTS} needed)")
    elif evidence > MAX_EVIDENCE_LOG_SD:
        reason = (f"the objects' sizes disagree: their typical size is uncertain by a factor "
                  f"{math.exp(evidence):.2f} on its own (at most {math.exp(MAX_EVIDENCE_LOG_SD):.2f})")
    estimate = PixelSizeEstimate(float(math.sqrt(low * high) / typical_px), float(typical_px), int(len(diameters)),
                                 log_sd, credible=reason is None, reason=reason)
    log.warning("%s has no calibration: typical object %.1f px -> estimated pixel size %.4g nm/px, +/- %.0f %% "
                "(give --pixel-size-nm to override)%s", micrograph.name, typical_px, estimate.pixel_size_nm,
                100 * estimate.relative_uncertainty,
                "" if estimate.credible else f"; not credible, sizes stay in pixels: {reason}")
    _RECENT[key] = estimate
    while len(_RECENT) > _RECENT_SIZE:
        _RECENT.popitem(last=False)
    return estimate


def reported_pixel_size_nm(micrograph: Micrograph) -> float | None:
    """The pixel size a micrograph's sizes are reported in nm with: its own, or ``None`` where it has
    none or its estimated one is only a working scale (``metadata["pixel_size_credible"]`` false)."""
    if micrograph.metadata.get("pixel_size_credible") is False:
        return None
    return micrograph.pixel_size_nm


def estimate_pixel_size_nm(micrograph: Micrograph, sample: "Sample | None", bright: bool | None = None,
                           diameter_nm: Sequence[float] | None = None) -> float:
    """:func:`estimate_pixel_size`, the value only."""
    return estimate_pixel_size(micrograph, sample, bright, diameter_nm).pixel_size_nm


#: Where a pixel size came from, as ``run.json``, the particle table and the report name it.
PIXEL_SIZE_SOURCES = ("file", "--pixel-size-nm", "calibration table", "scale bar", "estimated", "unknown")


def resolve_pixel_size(micrograph: Micrograph, sample: "Sample | None", instances: Any = None) -> dict[str, Any]:
    """The pixel size every command uses for ``micrograph``, and where it came from: one rule.

    In order: the micrograph's own (its file's calibration, ``--pixel-size-nm``, a calibration
    table or a scale bar read from its pixels, as ``metadata["pixel_size_source"]`` says); the
    prior extractor's estimate, where ``instances`` (its output) carries one; the estimate from
    the image for the recipe's ``sample`` (:func:`estimate_pixel_size`); else none (``unknown``,
    with the reason). Returns the scale record: ``pixel_size_nm``, ``source`` and, for an
    estimate, its uncertainty, ``credible`` and ``reason`` (:meth:`PixelSizeEstimate.as_dict`).
    """
    if micrograph.pixel_size_nm is not None:
        return {"pixel_size_nm": float(micrograph.pixel_size_nm),
                "source": micrograph.metadata.get("pixel_size_source", "file")}
    metadata = getattr(instances, "metadata", None) or {}
    if metadata.get("pixel_size_estimate") is not None:  # the extractor's, with its uncertainty
        return dict(metadata["pixel_size_estimate"])
    if metadata.get("pixel_size_nm_estimate") is not None:  # an extractor that gives the value only
        return {"pixel_size_nm": float(metadata["pixel_size_nm_estimate"]), "source": "estimated"}
    if sample is None or not getattr(sample, "diameter_nm", None):
        return {"pixel_size_nm": None, "source": "unknown", "reason": "no calibration and no expected object size"}
    try:
        return estimate_pixel_size(micrograph, sample).as_dict()
    except InputError as error:
        return {"pixel_size_nm": None, "source": "unknown", "reason": str(error)}


def apply_pixel_size(micrograph: Micrograph, record: dict[str, Any]) -> Micrograph:
    """Give ``micrograph`` the pixel size of a :func:`resolve_pixel_size` record, in place: its
    ``pixel_size_nm``, ``metadata["pixel_size_source"]`` and, for an estimate,
    ``metadata["pixel_size_estimate"]`` and ``["pixel_size_credible"]`` (false: sizes stay in
    pixels, :func:`reported_pixel_size_nm`)."""
    micrograph.pixel_size_nm = record.get("pixel_size_nm")
    micrograph.metadata["pixel_size_source"] = record.get("source", "file")
    if record.get("source") == "estimated":
        micrograph.metadata["pixel_size_estimate"] = dict(record)
    if record.get("credible") is False:
        micrograph.metadata["pixel_size_credible"] = False
    return micrograph


def image_record(micrograph: Micrograph, **measured: Any) -> dict[str, Any]:
    """One micrograph's entry in ``run.json["images"]``, the same for every command: ``shape``,
    ``pixel_size_nm``, ``pixel_size_source``, ``pixel_size_credible`` (false: its sizes are in
    pixels), ``pixel_size_estimate`` (an estimate's record, with its uncertainty and reason) and
    ``scale_bar`` where they apply, then ``measured`` (e.g. ``objects``, ``seconds``)."""
    record: dict[str, Any] = {"shape": list(micrograph.shape), "pixel_size_nm": micrograph.pixel_size_nm,
                              "pixel_size_source": micrograph.metadata.get(
                                  "pixel_size_source", "file" if micrograph.pixel_size_nm is not None else "unknown"),
                              "pixel_size_credible": reported_pixel_size_nm(micrograph) is not None}
    for key in ("pixel_size_estimate", "scale_bar"):
        if key in micrograph.metadata:
            record[key] = micrograph.metadata[key]
    record.update(measured)
    return record
