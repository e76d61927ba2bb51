"""Built-in physics adapters: ``haadf-stem`` and ``bf-stem``.

Registration only; the implementation (:mod:`.adapter`, numpy/scipy) is
imported by the factories. Defaults are typical of a 200–300 kV
aberration-corrected STEM; ``fit`` replaces the imaging conditions with
those of the lab's own micrographs.
"""
from __future__ import annotations

from emcopilot import Param, hookimpl


def _common_params(dose_e_per_A2: float, collection_fraction: float) -> dict[str, Param]:
    return {
        "dose_e_per_A2": Param(dose_e_per_A2, float, min=1e-3, max=1e9, unit="e/Å²",
                               help="effective dose: electrons per Å² reaching the detector at the "
                                    "recorded image's median level"),
        "gain_du_per_e": Param(1.0, float, min=1e-9, unit="DU/e", help="detector units per detected electron"),
        "offset_du": Param(0.0, float, unit="DU", help="detector dark level"),
        "read_noise_du": Param(1.0, float, min=0.0, unit="DU", help="Gaussian read-out noise (rms)"),
        "psf_fwhm_nm": Param(0.1, float, min=0.0, max=100.0, unit="nm",
                             help="probe FWHM (Gaussian core); ~0.08-0.1 nm corrected, 0.2-1 nm uncorrected"),
        "psf_tail_fraction": Param(0.0, float, min=0.0, max=1.0,
                                   help="share of the probe intensity in a long (Cauchy) tail"),
        "psf_tail_fwhm_nm": Param(0.5, float, min=1e-4, max=1e3, unit="nm", help="FWHM of the probe tail"),
        "apply_psf": Param(True, bool, help="apply the probe (and BF lens) transfer; false for clean images "
                                            "that already carry the blur, e.g. from a learned generator"),
        "jitter_rms_nm": Param(0.01, float, min=0.0, max=100.0, unit="nm", help="rms scan-line shift"),
        "jitter_spectrum_exponent": Param(1.0, float, min=0.0, max=3.0,
                                          help="row shifts have a 1/f^exponent power spectrum"),
        "drift_nm_per_min": Param(0.5, float, min=0.0, max=1e4, unit="nm/min", help="linear specimen drift"),
        "drift_direction_deg": Param(None, float, min=-360.0, max=360.0, unit="deg",
                                     help="drift direction from the fast scan axis; random when null"),
        "pixel_dwell_us": Param(10.0, float, min=1e-3, max=1e5, unit="µs", help="dwell time per pixel"),
        "flyback_us": Param(500.0, float, min=0.0, max=1e6, unit="µs", help="line flyback time"),
        "flyback_amplitude_nm": Param(0.02, float, min=0.0, max=100.0, unit="nm",
                                      help="scan-coil lag at the start of each line"),
        "flyback_decay_us": Param(100.0, float, min=1e-3, max=1e6, unit="µs",
                                  help="time constant over which the line-start lag decays"),
        "collection_fraction": Param(collection_fraction, float, min=1e-6, max=1.0,
                                     help="detected / incident electrons at the median level (for damage dose)"),
        "damage_critical_dose_e_per_A2": Param(5e6, float, min=1.0, unit="e/Å²",
                                               help="incident dose at which 63 % of single atoms have hopped"),
        "damage_hop_nm": Param(0.25, float, min=0.0, max=10.0, unit="nm", help="distance of a hop"),
        "damage_loss_fraction": Param(0.2, float, min=0.0, max=1.0, help="share of hopping atoms that leave"),
        "erosion_nm_per_1e6_e_per_A2": Param(0.1, float, min=0.0, unit="nm per 1e6 e/Å²",
                                             help="particle edge erosion per incident dose"),
        "randomize": Param(True, bool, help="after fit(), draw conditions within the fitted ranges"),
        "clean_units": Param("relative", str, choices=("relative", "detector"),
                             help="relative: clean is a signal with 0 = no electrons (physical generator); "
                                  "detector: clean is in the real images' units (learned generator)"),
    }


def _bf_params() -> dict[str, Param]:
    params = _common_params(dose_e_per_A2=2e4, collection_fraction=0.8)
    params.update({
        "defocus_nm": Param(-20.0, float, min=-1e4, max=1e4, unit="nm", help="defocus (negative = underfocus)"),
        "cs_mm": Param(0.0, float, min=0.0, max=10.0, unit="mm", help="spherical aberration (0 when corrected)"),
        "accelerating_voltage_kV": Param(None, float, min=1.0, max=1000.0, unit="kV",
                                         help="default: the recipe's sample block, else 200"),
        "phase_contrast_strength": Param(0.5, float, min=0.0, max=10.0,
                                         help="projected phase per unit of absorption (edge fringes)"),
    })
    return params


def make_haadf(params, sample):
    from .adapter import HaadfAdapter
    return HaadfAdapter(params, sample)


def make_bf(params, sample):
    from .adapter import BrightFieldAdapter
    return BrightFieldAdapter(params, sample)


@hookimpl
def register_physics_adapters(register):
    register("haadf-stem", make_haadf, params=_common_params(dose_e_per_A2=1000.0, collection_fraction=0.05),
             description="HAADF-STEM: probe PSF, scan jitter, drift, flyback, radiation damage, "
                         "Poisson-Gaussian detector; fit() to real micrographs")
    register("bf-stem", make_bf, params=_bf_params(),
             description="BF-STEM: as haadf-stem plus defocus phase-contrast fringes; high-background shot noise")
