"""The ``physical`` generator: an analytic renderer of clean STEM images (no learning).

From a :class:`~emcopilot.specimen.layout.Layout` it renders what a perfect instrument
would record, before any probe blur, scan distortion or noise (those belong
to the physics adapter):

- HAADF: the scattered fraction in the thin-specimen, incoherent-imaging
  approximation, linear in projected thickness and ∝ Zⁿ:
  f = κ·(Z_support^n·t_support + Σ Z^n·t). The exponent n ≈ 1.7 (1.6–2 for
  typical annular detectors; Hartel, Rose & Dinges, Ultramicroscopy 63 (1996)
  93; Krivanek et al., Nature 464 (2010) 571).
- BF: the transmitted fraction T = exp(-κ'·(Z_support^n·t_support + Σ Z^n·t)),
  so objects are darker than the support.

Particles contribute their projected thickness (chord of the
ellipsoid-like body drawn by the layout); atoms and clusters contribute one
pixel-integrated Gaussian per atom of FWHM ``atom_fwhm_nm`` holding the
mass-thickness of one atom volume. The amorphous support is a random field
with a 1/f^β power spectrum around its mean thickness; vacuum where the
layout's support mask is false.

``fit`` measures the object-to-background intensity ratio (mean inside the
objects over the median background, above the image's 0.5th percentile) and
the support's relative roughness of real images with prior label maps;
``generate`` then uses that roughness and scales the support (HAADF) or the
attenuation (BF) per image so the rendered ratio matches (± a random
spread), since absolute thicknesses are rarely known. The support's spectral
slope is a parameter: set it from the adapter's fitted ``spectrum_beta``.

Atoms are judged locally instead: a single atom on an uneven support is
invisible to a whole-image ratio. For atomistic samples ``fit`` averages the
background-subtracted neighbourhoods of the prior's atoms (each centred on
its label) and measures their apparent FWHM (probe, vibration and drift
included: aberration-corrected images of Pt atoms show 0.1–0.2 nm) and the
peak's height over the local support level. ``generate`` then renders atoms
at that width (± ``atom_spread`` per image) and scales each atom so its peak
stands that far above the support under it (± ``atom_spread`` per atom), so
the adapter's fitted dose gives the real signal-to-noise. The prior finds
the brighter atoms first, so the fitted contrast is if anything high; the
spread reaches down to half of it.

Particles likewise: ``fit`` measures each prior particle's mean signal over
the support interpolated from around it (a Gaussian average of non-particle
pixels two median diameters wide) and the support's texture at that scale
(robust rms minus white noise); ``generate`` scales each particle to a
contrast drawn from exp(U(-2s, s)) times the fitted one (s =
``contrast_spread``) over the support under it, and gives the support
field that texture. The large-scale support (thickness steps, vacuum) is
left to the segmenter's background subtraction.

With ``support: real`` the objects are rendered instead on the lab's own
support (HAADF particles and atoms, BF particles): ``fit`` keeps up to
:data:`~.background.SUPPORT_CROPS_PER_IMAGE` crops of each real micrograph (on the
working grid, relative to its support level, mostly support rather than
vacuum) in which the prior's objects, and any other compact bright excess
over :data:`~.background.MISSED_OBJECT_SIGMA` robust standard deviations at their scale,
are replaced by the support interpolated from around them plus the support's
own texture copied from elsewhere in the micrograph (white noise there would
leave particle-shaped patches of another grain). Grains, thickness steps, vacuum edges and the
detector's texture are then the real ones; only the objects and their
labels are drawn. The crops are saved with the model (``support_bank.npz``,
float16, read without pickles) and stay in the run directory.
"""
from __future__ import annotations

import json
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from emcopilot import InputError, Param, hookimpl

from .background import (
    SUPPORT_BANK_FILE,
    build_bank,
    clipped_variance,
    dark_level,
    load_bank,
    random_crop,
    robust_variance,
    save_bank,
    white_noise_variance,
    wide_gaussian,
)

log = logging.getLogger("emcopilot.generators.physical")

MODALITIES = ("haadf-stem", "bf-stem")
#: The support level under an atom is the median over this width around it (fit) — the atom scale.
LOCAL_BACKGROUND_NM = 0.6
CONFIG_FILE = "physical_generator.json"

PARAMS = {
    "modality": Param(None, str, choices=MODALITIES, help="default: the recipe's sample modality"),
    "z_exponent": Param(1.7, float, min=0.5, max=2.5, help="n in the Zⁿ contrast of HAADF"),
    "haadf_fraction_per_nm_Zn": Param(2e-5, float, min=0.0, max=1.0, unit="1/(nm·Zⁿ)",
                                      help="HAADF scattered fraction per nm of thickness per Zⁿ"),
    "bf_attenuation_per_nm_Zn": Param(8e-5, float, min=0.0, max=1.0, unit="1/(nm·Zⁿ)",
                                      help="BF attenuation exponent per nm of thickness per Zⁿ"),
    "support_thickness_nm": Param(10.0, float, min=0.0, max=1e4, unit="nm", help="mean support thickness"),
    "support_roughness": Param(0.3, float, min=0.0, max=1.0,
                               help="relative rms of the support's projected thickness"),
    "support_spectrum_beta": Param(2.0, float, min=0.0, max=5.0,
                                   help="support thickness fluctuations have a 1/f^β power spectrum"),
    "atom_fwhm_nm": Param(0.05, float, min=1e-4, max=10.0, unit="nm",
                          help="width of one atom's projected potential (thermal smearing included)"),
    "atom_volume_nm3": Param(0.0151, float, min=1e-4, max=1.0, unit="nm³",
                             help="volume per atom in the solid (fcc Pt: a³/4 = 0.0151 nm³)"),
    "match_contrast": Param(True, bool, help="after fit(), match the real object/background ratio "
                                             "and support roughness"),
    "contrast_spread": Param(0.2, float, min=0.0, max=2.0,
                             help="log-normal spread of the matched contrast between images"),
    "support": Param("field", str, choices=("field", "real"),
                     help="after fit(): render on a 1/f^β random field, or on the real micrographs' own support "
                          "with every prior (and other bright) object emptied out (BF: particles only)"),
    "atom_spread": Param(0.3, float, min=0.0, max=2.0,
                         help="atoms and clusters, after fit(): log-normal spread of each atom's fitted local "
                              "contrast, and of the fitted apparent width between images"),
}


@hookimpl
def register_generators(register):
    register("physical", make_physical, params=PARAMS,
             description="analytic renderer: projected thickness x Z^n (HAADF) or transmission (BF), "
                         "1/f^β amorphous support, Gaussian atoms; no learning")


def make_physical(params: Mapping[str, Any], sample: Any) -> "PhysicalGenerator":
    return PhysicalGenerator(params, sample)


@lru_cache(maxsize=8)
def _field_amplitude(rows: int, cols: int, beta: float) -> np.ndarray:
    """sqrt of the power spectrum (k² + k0²)^(-β/2) on an rfft2 grid, k in cycles/px."""
    from scipy import fft as sfft
    k2 = sfft.fftfreq(rows)[:, None] ** 2 + sfft.rfftfreq(cols)[None, :] ** 2
    k0 = 1.0 / max(rows, cols)
    amplitude = ((k2 + k0 ** 2) ** (-beta / 4)).astype(np.float32)
    amplitude[0, 0] = 0.0
    return amplitude


def _support_field(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random field with power spectrum ∝ (k² + k0²)^(-β/2)."""
    from scipy import fft as sfft
    amplitude = _field_amplitude(shape[0], shape[1], float(beta))
    spectrum = np.empty(amplitude.shape, np.complex64)  # single precision throughout
    spectrum.real = rng.standard_normal(amplitude.shape, dtype=np.float32) * amplitude
    spectrum.imag = rng.standard_normal(amplitude.shape, dtype=np.float32) * amplitude
    field = sfft.irfft2(spectrum, s=shape, workers=1)
    return field / np.float32(max(float(field.std()), 1e-30))


def _atom_image(shape: tuple[int, int], atoms_px: np.ndarray, weights: np.ndarray,
                fwhm_px: float) -> np.ndarray:
    """Sum of pixel-integrated 2-D Gaussians (integral = weight each), via erf differences."""
    from scipy.special import erf
    image = np.zeros(shape, np.float64)
    if len(atoms_px) == 0:
        return image.astype(np.float32)
    sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))
    half = int(math.ceil(4 * sigma)) + 1
    offsets = np.arange(-half, half + 1)
    centre = np.round(atoms_px).astype(np.int64)
    frac = atoms_px - centre
    edges = offsets[None, :, None] + np.array([-0.5, 0.5])[None, None, :]  # (1, w, 2)
    scale = 1.0 / (math.sqrt(2) * sigma)
    profile_y = np.diff(erf((edges - frac[:, 0, None, None]) * scale), axis=2)[..., 0] / 2
    profile_x = np.diff(erf((edges - frac[:, 1, None, None]) * scale), axis=2)[..., 0] / 2
    blocks = weights[:, None, None] * profile_y[:, :, None] * profile_x[:, None, :]
    rows = centre[:, 0, None, None] + offsets[None, :, None]
    cols = centre[:, 1, None, None] + offsets[None, None, :]
    rows, cols = np.broadcast_to(rows, blocks.shape), np.broadcast_to(cols, blocks.shape)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    np.add.at(image, (rows[inside], cols[inside]), blocks[inside])
    return image.astype(np.float32)


class PhysicalGenerator:
    """Renders clean images from layouts; see the module docstring for the physics."""

    def __init__(self, params: Mapping[str, Any], sample: Any = None):
        self.params = dict(params)
        modality = self.params["modality"] or getattr(sample, "modality", None) or "haadf-stem"
        if modality not in MODALITIES:
            raise InputError(f"physical generator: modality {modality!r} is not rendered; "
                             f"choose one of {list(MODALITIES)} with the 'modality' parameter")
        self.modality = modality
        self.kind = getattr(sample, "kind", "particles") or "particles"
        self.fitted: dict[str, Any] = {}
        self.bank: list[np.ndarray] = []  # support crops (``support: real``)

    # ------------------------------------------------------------------ rendering

    def object_mass_thickness(self, layout) -> np.ndarray:
        """Projected Zⁿ·thickness of the objects, nm·Zⁿ per pixel."""
        n = self.params["z_exponent"]
        if layout.kind == "particles" or layout.atoms is None:
            objects = np.zeros(layout.shape, np.float32)
            inside = layout.thickness_nm > 0  # Zⁿ only where there is matter (np.power is slow)
            objects[inside] = layout.thickness_nm[inside] * np.power(layout.z_map[inside], np.float32(n))
        else:
            z = np.asarray(layout.atom_z, np.float64)
            # one atom holds Zⁿ times its volume; spread over the pixel area it is a thickness
            weights = z ** n * self.params["atom_volume_nm3"] / layout.pixel_size_nm ** 2
            objects = _atom_image(layout.shape, np.asarray(layout.atoms, np.float64), weights,
                                  self.atom_fwhm_nm() / layout.pixel_size_nm)
        return objects

    def atom_fwhm_nm(self, rng: np.random.Generator | None = None) -> float:
        """The atoms' rendered width: fitted (drawn per image when ``rng`` is given) or declared."""
        fitted = self.fitted.get("atom_fwhm_nm") if self.params["match_contrast"] else None
        if not fitted:
            return float(self.params["atom_fwhm_nm"])
        spread = self.params["atom_spread"] / 2
        return float(fitted * (math.exp(rng.uniform(-spread, spread)) if rng is not None else 1.0))

    def _fine_to_total(self, field: np.ndarray, pixel_size_nm: float) -> float:
        """The rms of a unit field whose texture finer than the atom-scale background has the fitted rms."""
        from scipy import ndimage
        sigma = self.fitted.get("support_fine_sigma_nm", 0.3 * LOCAL_BACKGROUND_NM) / pixel_size_nm
        fine = float(np.std(field - ndimage.gaussian_filter(field, sigma)))
        return self.fitted["support_fine_roughness"] / max(fine, 1e-6)

    def _atoms_at_local_contrast(self, layout, level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Atoms whose peaks stand a fitted fraction above ``level`` under them (see module docstring)."""
        atoms = np.asarray(layout.atoms, np.float64).reshape(-1, 2)
        fwhm_px = self.atom_fwhm_nm(rng) / layout.pixel_size_nm
        if not len(atoms):
            return np.zeros(layout.shape, np.float32)
        z = np.asarray(layout.atom_z, np.float64)
        relative = (z / z.max()) ** self.params["z_exponent"]  # heavier atoms brighter, same support
        contrast = self.fitted["atom_contrast"] * relative * np.exp(
            rng.uniform(-self.params["atom_spread"] * 2, self.params["atom_spread"], len(atoms)))
        rows = np.clip(np.round(atoms[:, 0]).astype(int), 0, layout.shape[0] - 1)
        cols = np.clip(np.round(atoms[:, 1]).astype(int), 0, layout.shape[1] - 1)
        # the support's level under each atom (a floor where the field dips to a hole)
        under = np.maximum(level[rows, cols], float(np.median(level)) * 0.05)
        peak_per_weight = float(_atom_image((9, 9), np.array([[4.0, 4.0]]), np.ones(1), fwhm_px)[4, 4]) \
            if fwhm_px > 0 else 1.0
        return _atom_image(layout.shape, atoms, contrast * under / peak_per_weight, fwhm_px)

    def _local_particles(self, layout) -> bool:
        return bool(self.params["match_contrast"] and self.fitted.get("particle_contrast")
                    and layout.kind == "particles")

    def _with_particles_at_local_contrast(self, objects, support, layout, rng, floor=None) -> np.ndarray:
        """Each particle's mean signal a fitted fraction above (HAADF) or below (BF) the support under it.

        HAADF: the support under each particle is its level, at least ``floor`` (default 5 % of the
        median: a floor over holes). ``support=None`` returns the particles' relative BF dips alone.
        """
        from scipy import ndimage
        labels = layout.labels
        ids = np.unique(labels[labels > 0])
        lut = np.zeros(int(labels.max()) + 1, np.float32)
        if len(ids):
            spread = self.params["contrast_spread"]
            contrast = self.fitted["particle_contrast"] * np.exp(rng.uniform(-2 * spread, spread, len(ids)))
            object_mean = np.asarray(ndimage.mean(objects, labels, ids))
            level = 1.0  # BF: a relative dip
            if self.modality == "haadf-stem" and support is not None:
                floor = float(np.median(support)) * 0.05 if floor is None else floor
                level = np.maximum(np.asarray(ndimage.mean(support, labels, ids)), floor)
            lut[ids] = np.where(object_mean > 0, contrast * level / np.maximum(object_mean, 1e-30), 0.0)
        objects = objects * lut[labels]
        if support is None:
            return objects
        if self.modality == "haadf-stem":
            support += objects
            support *= np.float32(self.params["haadf_fraction_per_nm_Zn"])
            return support
        support *= np.float32(-self.params["bf_attenuation_per_nm_Zn"])
        np.exp(support, out=support)
        support *= 1 - np.minimum(objects, np.float32(0.95))
        return support

    def _local_atoms(self, layout) -> bool:
        return bool(self.params["match_contrast"] and self.fitted.get("atom_contrast")
                    and layout.kind != "particles" and layout.atoms is not None)

    def render(self, layout, rng: np.random.Generator) -> np.ndarray:
        if self._real_support(layout):
            return self._render_on_real_support(layout, rng)
        objects = None if self._local_atoms(layout) else self.object_mass_thickness(layout)
        # support mass-thickness Z_s^n·t·max(1 + roughness·field, 0), in place (float32 passes are the cost)
        support = _support_field(layout.shape, self.params["support_spectrum_beta"], rng)
        roughness = self.fitted.get("support_roughness") if self.params["match_contrast"] else None
        # a fitted fine roughness of 0 is a measurement (no texture above the noise at the object scale),
        # not a missing value: the whole-image roughness would bury the atoms
        if (objects is None or self._local_particles(layout)) and self.fitted.get("support_fine_roughness") is not None:
            roughness = self._fine_to_total(support, layout.pixel_size_nm)
        support *= np.float32(self.params["support_roughness"] if roughness is None else min(roughness, 1.0))
        support += np.float32(1)
        np.maximum(support, 0, out=support)  # a thickness; the field's rare deep troughs are holes
        if layout.support is not None:
            support[~layout.support] = 0
        support *= np.float32(self.params["support_thickness_nm"] * layout.support_z ** self.params["z_exponent"])
        if objects is not None and self._local_particles(layout):
            return self._with_particles_at_local_contrast(objects, support, layout, rng)
        if self._local_atoms(layout):
            if self.modality == "haadf-stem":
                support += self._atoms_at_local_contrast(layout, support, rng)
                support *= np.float32(self.params["haadf_fraction_per_nm_Zn"])
                return support
            support *= np.float32(-self.params["bf_attenuation_per_nm_Zn"])
            np.exp(support, out=support)  # BF: each atom a dip of its fitted relative depth
            dips = self._atoms_at_local_contrast(layout, np.ones_like(support), rng)
            support *= 1 - np.minimum(dips, np.float32(0.95))
            return support
        support_scale, attenuation_scale = self._contrast_scales(objects, support, layout, rng)
        if self.modality == "haadf-stem":
            support *= np.float32(support_scale)
            support += objects
            support *= np.float32(self.params["haadf_fraction_per_nm_Zn"])
            return support
        support += objects
        support *= np.float32(-self.params["bf_attenuation_per_nm_Zn"] * attenuation_scale)
        return np.exp(support, out=support)

    def _real_support(self, layout) -> bool:
        return bool(self.params["support"] == "real" and self.bank
                    and (self._local_particles(layout) or self._local_atoms(layout) and self.modality == "haadf-stem"))

    def _render_on_real_support(self, layout, rng: np.random.Generator) -> np.ndarray:
        """The layout's particles or atoms at the fitted local contrast on a crop of the real support."""
        support = random_crop(self.bank, layout.shape, rng)
        mass = np.float32(self.params["support_thickness_nm"] * layout.support_z ** self.params["z_exponent"])
        if self.modality == "haadf-stem":  # the crop in the field's units: mass-thickness ...
            support *= mass
            if self._local_atoms(layout):
                support += self._atoms_at_local_contrast(layout, support, rng)
                support *= np.float32(self.params["haadf_fraction_per_nm_Zn"])
                return support
            floor = 0.5 * float(mass)  # a particle over vacuum keeps a visible signal (1 = the support level)
            return self._with_particles_at_local_contrast(self.object_mass_thickness(layout), support, layout,
                                                          rng, floor=floor)
        dips = self._with_particles_at_local_contrast(self.object_mass_thickness(layout), None, layout, rng)
        support *= np.float32(math.exp(-self.params["bf_attenuation_per_nm_Zn"] * float(mass)))  # ... transmission
        support *= 1 - np.minimum(dips, np.float32(0.95))
        return support

    def _contrast_scales(self, objects, support, layout, rng) -> tuple[float, float]:
        """(support scale for HAADF, attenuation scale for BF) matching the fitted contrast ratio."""
        ratio = self.fitted.get("object_to_background_ratio")
        if not (self.params["match_contrast"] and ratio):
            return 1.0, 1.0
        inside = layout.labels > 0
        if not (inside.any() and (~inside).any()):
            return 1.0, 1.0
        ratio = ratio ** math.exp(rng.normal(0, self.params["contrast_spread"]))
        object_level = float(np.mean(objects[inside]))  # mean: atoms are peaked, blur keeps the mean
        background = float(np.median(support[~inside]))
        if self.modality == "haadf-stem" and ratio > 1 and background > 0:
            # (O + s·B) / (s·B) = r  ->  s = O / (B (r - 1))
            return object_level / (background * (ratio - 1)), 1.0
        if self.modality == "bf-stem" and 0 < ratio < 1 and object_level > 0:
            # exp(-κ'·O) = r  ->  κ' = -ln r / O
            return 1.0, -math.log(ratio) / (object_level * self.params["bf_attenuation_per_nm_Zn"])
        return 1.0, 1.0

    # ------------------------------------------------------------------ Generator protocol

    def fit(self, label_maps: Sequence[np.ndarray], images: Sequence[Any], workdir: Path | None = None, *,
            budget: Any = None) -> dict[str, Any]:
        """Contrast and support texture of real images with prior label maps (medians over images).

        - ``object_to_background_ratio``: mean(object) / median(background),
          both above the dark level (the image's 0.5th percentile);
        - ``support_roughness``: rms of the background over its level, after
          removing white noise (variance of the fourth difference along rows,
          which cancels smooth texture).
        """
        if len(label_maps) != len(images):
            raise InputError(f"physical.fit: {len(label_maps)} label maps for {len(images)} images")
        ratios, roughness = [], []
        for labels, image in zip(label_maps, images):
            data = np.asarray(getattr(image, "data", image), np.float64)
            labels = np.asarray(labels)
            if labels.shape != data.shape:
                raise InputError(f"physical.fit: label map {labels.shape} does not match image {data.shape}")
            inside = labels > 0
            if not inside.any() or inside.all():
                continue
            dark = float(np.percentile(data, 0.5))
            background = float(np.median(data[~inside])) - dark
            if background <= 0:
                continue
            ratios.append((float(np.mean(data[inside])) - dark) / background)
            texture = float(np.var(data[~inside])) - white_noise_variance(data, ~inside)
            roughness.append(math.sqrt(max(texture, 0.0)) / background)
        self.fitted = {"object_to_background_ratio": float(np.median(ratios)) if ratios else None,
                       "support_roughness": float(np.median(roughness)) if roughness else None,
                       "images_used": len(ratios), "modality": self.modality}
        if self.kind != "particles":
            self.fitted.update(self._fit_atoms(label_maps, images))
        else:
            self.fitted.update(self._fit_particles(label_maps, images))
        self.bank = build_bank(label_maps, images, self.modality) if self.params["support"] == "real" else []
        self.fitted["support_crops"] = len(self.bank)
        if self.params["support"] == "real" and not self.bank:
            log.warning("physical generator: no micrograph showed enough support for a crop; rendering on "
                        "the random-field support instead")
        return dict(self.fitted)

    def _signal(self, data: np.ndarray) -> np.ndarray:
        """Signal above the detector's dark level, objects positive (BF inverted)."""
        data = data - dark_level(data)
        return -data if self.modality == "bf-stem" else data

    def _fit_particles(self, label_maps: Sequence[np.ndarray], images: Sequence[Any]) -> dict[str, Any]:
        """Each prior particle's mean signal over the support around it, and the support's texture.

        The support under a particle is interpolated from its surroundings: a Gaussian average over
        non-particle pixels, ``2×`` the median particle diameter wide (normalised convolution).
        """
        from scipy import ndimage

        contrasts, fine_roughness, sigmas = [], [], []
        for labels, image in zip(label_maps, images):
            pixel_size = getattr(image, "pixel_size_nm", None)
            data = np.asarray(getattr(image, "data", image), np.float64)
            ids = np.unique(labels)
            ids = ids[ids > 0]
            if pixel_size is None or not len(ids):
                continue
            data = self._signal(data)
            areas = np.asarray(ndimage.sum(np.ones_like(data), labels, ids))
            sigma = max(2.0, 2.0 * float(np.median(2 * np.sqrt(areas / np.pi))))
            outside = ~ndimage.binary_dilation(labels > 0, iterations=1)
            weight = wide_gaussian(outside.astype(np.float64), sigma)
            background = wide_gaussian(np.where(outside, data, 0.0), sigma) / np.maximum(weight, 1e-3)
            level = np.abs(np.asarray(ndimage.mean(background, labels, ids)))
            inside = np.asarray(ndimage.mean(data, labels, ids)) - np.asarray(ndimage.mean(background, labels, ids))
            good = level > 0
            contrasts.extend((inside[good] / level[good]).tolist())
            # particle-scale texture: the MAD, as the particles the prior missed are many and large (a clipped
            # variance counts them: on ardagen-dev HAADF it raised the fitted fine roughness from 0.20 to 0.29)
            texture = robust_variance((data - background)[outside]) - white_noise_variance(data, outside)
            support_level = abs(float(np.median(background[outside])))
            if support_level > 0:
                fine_roughness.append(math.sqrt(max(texture, 0.0)) / support_level)
                sigmas.append(sigma * pixel_size)
        if len(contrasts) < 5:
            return {"particle_contrast": None, "particles_used": len(contrasts)}
        contrast = float(np.median(contrasts))
        return {"particle_contrast": contrast if contrast > 0 else None, "particles_used": len(contrasts),
                "support_fine_roughness": float(np.median(fine_roughness)) if fine_roughness else None,
                "support_fine_sigma_nm": float(np.median(sigmas)) if sigmas else None}

    def _fit_atoms(self, label_maps: Sequence[np.ndarray], images: Sequence[Any]) -> dict[str, Any]:
        """Apparent FWHM and local peak contrast of the prior's atoms (pooled over images)."""
        from scipy import ndimage

        windows, contrasts, pixel_sizes, fine_roughness = [], [], [], []
        for labels, image in zip(label_maps, images):
            pixel_size = getattr(image, "pixel_size_nm", None)
            if pixel_size is None:
                continue  # widths in nm need a calibration
            data = np.asarray(getattr(image, "data", image), np.float64)
            ids = np.unique(labels)
            ids = ids[ids > 0]
            if not len(ids):
                continue
            data = self._signal(data)
            size = max(5, int(round(LOCAL_BACKGROUND_NM / pixel_size)) | 1)  # the support under an atom
            background = ndimage.gaussian_filter(ndimage.median_filter(data, size=size), size / 7)
            radius = max(3, int(math.ceil(0.3 / pixel_size)))
            residual = data - background
            away = ~ndimage.binary_dilation(labels > 0, iterations=2)
            # atom-scale texture: mean squares on both sides, since the detector's pixel noise is heavy-tailed
            # (the MAD of the residual minus the mean-square noise was negative on 8 of the 11 acstem-dev
            # images on their own grid: a fitted texture of 0)
            texture = clipped_variance(residual[away]) - white_noise_variance(data, away)
            support_level = float(np.median(background[labels == 0]))
            if support_level > 0:
                fine_roughness.append(math.sqrt(max(texture, 0.0)) / support_level)
            centres = np.round(ndimage.center_of_mass(labels > 0, labels, ids)).astype(int).reshape(-1, 2)
            inside = np.all((centres >= radius) & (centres < np.array(data.shape) - radius), axis=1)
            for row, col in centres[inside]:
                window = residual[row - radius:row + radius + 1, col - radius:col + radius + 1]
                level = abs(float(background[row, col]))
                if level > 0:
                    windows.append(window)
                    contrasts.append(float(window[radius, radius]) / level)
                    pixel_sizes.append(pixel_size)
        if len(windows) < 5:
            return {"atom_fwhm_nm": None, "atom_contrast": None, "atoms_used": len(windows)}
        fine = float(np.median(fine_roughness)) if fine_roughness else None
        pixel_size = float(np.median(pixel_sizes))
        mean = np.mean([w for w in windows if w.shape == windows[0].shape], axis=0)
        radius = mean.shape[0] // 2
        rows, cols = np.indices(mean.shape) - radius
        distance = np.hypot(rows, cols)
        profile = np.array([mean[(distance >= k - 0.5) & (distance < k + 0.5)].mean() for k in range(radius + 1)])
        half = profile[0] / 2
        below = np.nonzero(profile < half)[0]
        if profile[0] <= 0 or not len(below):
            return {"atom_fwhm_nm": None, "atom_contrast": None, "atoms_used": len(windows),
                    "support_fine_roughness": fine}
        k = int(below[0])
        crossing = k - 1 + (profile[k - 1] - half) / (profile[k - 1] - profile[k])
        return {"atom_fwhm_nm": float(2 * crossing * pixel_size),
                "atom_contrast": float(np.median(contrasts)), "atoms_used": len(windows),
                "support_fine_roughness": fine}

    def generate(self, layouts: Sequence[Any], rng: np.random.Generator) -> list[np.ndarray]:
        return [self.render(layout, rng) for layout in layouts]

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"params": self.params, "modality": self.modality, "fitted": self.fitted}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if self.bank:
            save_bank(self.bank, directory)

    def load(self, directory: Path) -> None:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise InputError(f"physical generator: no {CONFIG_FILE} in {directory}")
        config = json.loads(path.read_text())
        self.params.update(config.get("params", {}))
        self.modality = config.get("modality", self.modality)
        self.fitted = dict(config.get("fitted") or {})
        self.bank = load_bank(directory) if self.params.get("support") == "real" else []
        if len(self.bank) < int(self.fitted.get("support_crops") or 0):
            raise InputError(f"physical generator: {Path(directory) / SUPPORT_BANK_FILE} is missing or incomplete "
                             f"({len(self.bank)} of {self.fitted['support_crops']} support crops); fit again")
