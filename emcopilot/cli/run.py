"""``emcopilot run RECIPE --input PATH... --out DIR``: the closed loop, label-free."""
from __future__ import annotations

import math
from pathlib import Path

from . import add_calibration_arguments, add_input_arguments, read_calibration_arguments


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "run", help="run the closed loop on unlabelled micrographs",
        description="Extract priors, learn contrast, synthesize labelled micrographs, train a segmenter "
                    "and measure the real images. Re-running with the same --out resumes.")
    parser.add_argument("recipe", help="built-in recipe name or path to a YAML file")
    add_input_arguments(parser)
    parser.add_argument("--out", "-o", required=True, type=Path, help="output directory")
    parser.add_argument("--profile", help="training profile of the recipe (default: the recipe's)")
    add_calibration_arguments(parser)
    parser.add_argument("--max-minutes", type=float, metavar="MIN",
                        help="wall-time budget of each training stage (overrides the profile's max_minutes); "
                             "where the pace shows the planned steps will not fit, training anneals over the "
                             "time it has instead of its step count")
    parser.add_argument("--priors-from", type=Path, metavar="DIR",
                        help="hand-corrected label images (named as masks/, e.g. saved by the napari widget into "
                             "<run>/corrections/) to use as the priors of the micrographs they belong to, instead "
                             "of the prior extractor's; the run is then no longer label-free and says so")
    parser.add_argument("--force", metavar="STAGE", help="redo this stage and all later ones")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args) -> int:
    from ..pipeline.loop import Loop
    from ..core.recipe import load_recipe
    from ..io.readers import expand_inputs
    recipe = load_recipe(args.recipe)
    # the folders are listed again by the loop; here only to warn of table rows that match no input
    listed = expand_inputs(args.input, recursive=args.recursive) if args.calibration else ()
    pixel_size_nm, calibration = read_calibration_arguments(args, listed)
    result = Loop(recipe, args.input, args.out, profile=args.profile, pixel_size_nm=pixel_size_nm,
                  calibration=calibration,
                  force=args.force, device=args.device, progress=not args.no_progress,
                  max_minutes=args.max_minutes, recursive=args.recursive, priors_from=args.priors_from,
                  scale_bar_nm=args.scale_bar_nm).run()
    pooled = result.statistics["pooled"]
    unit = result.statistics["unit"]
    low, high = pooled.get("ci", {}).get("mean", (float("nan"), float("nan")))
    interval = f"95% CI [{low:.3g}, {high:.3g}]"
    if "mean" in pooled.get("ci_total", {}):
        total_low, total_high = pooled["ci_total"]["mean"]
        interval += (f" from sampling; [{total_low:.3g}, {total_high:.3g}] with the estimated scale, "
                     f"+/- {100 * math.expm1(pooled['scale_log_sd']):.0f} %")
    detected = sum(stats.get("detected", 0) for stats in result.statistics.get("per_image", {}).values()) \
        if result.statistics.get("per_image") else pooled.get("detected", 0)
    print(f"{len(result.micrographs)} micrograph(s), {detected} objects; "
          f"mean diameter {pooled.get('mean', float('nan')):.3g} {unit} "
          f"({interval}) -> {result.out / 'report.html'}")
    from ..pipeline.scoring import headline
    scores = headline(result.run_info.get("metrics") or {})
    if scores:
        print(scores)
    refused = [name for name, entry in (result.run_info.get("images") or {}).items()
               if entry.get("pixel_size_credible") is False]
    if refused:
        print(f"{len(refused)} image(s) in pixels only, their estimated scale not credible: {', '.join(refused[:5])}"
              f"{' ...' if len(refused) > 5 else ''} (reasons in report.html)")
    if result.errors:
        print(f"{len(result.errors)} input(s) failed: see {result.out / 'errors.csv'}")
        return 3
    return 0
