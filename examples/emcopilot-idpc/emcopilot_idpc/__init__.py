"""iDPC-STEM for emcopilot: registration only (the physics lives in adapter.py)."""
from importlib.resources import files

from emcopilot import Param, hookimpl

PARAMS = {
    "probe_fwhm_nm": Param(0.1, float, min=0.0, max=10.0, unit="nm",
                           help="full width at half maximum of the probe intensity"),
    "dose_e_per_A2": Param(500.0, float, min=1e-3, unit="e/Å²", help="electron dose per frame"),
    "phase_per_Z_thickness": Param(2e-3, float, min=0.0, unit="rad/(Z·nm)",
                                   help="projected phase per unit Z and nm of thickness"),
}


def make_adapter(params, sample):
    from .adapter import IdpcAdapter
    return IdpcAdapter(**params)


@hookimpl
def register_physics_adapters(register):
    register("idpc-stem", make_adapter, params=PARAMS,
             description="integrated differential phase contrast STEM: phase image with 1/|k| shot noise")


@hookimpl
def register_recipes(register):
    register(files(__name__) / "recipes")
