"""``emcopilot demo [--out DIR]``: the loop end to end on self-made micrographs with hidden truth."""
from __future__ import annotations

from pathlib import Path


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="run the whole loop on built-in synthetic data and score it",
                                   description="Makes 'experimental' micrographs with the physics engine (labels "
                                               "hidden), runs the recipe's fast profile label-free, and prints "
                                               "detection F1 and size error against the hidden truth.")
    parser.add_argument("--out", "-o", type=Path, default=Path("emcopilot-demo"), help="output directory")
    parser.add_argument("--recipe", default="nanoparticles-haadf", help="recipe to demonstrate")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args) -> int:
    from ..demo import run_demo
    scores = run_demo(args.out, args.recipe, progress=not args.no_progress)
    detection, sizes = scores["detection"], scores["size_distribution"]
    print(f"demo ({scores['recipe']}): detection F1 {detection['f1']:.3f} "
          f"(precision {detection['precision']:.3f}, recall {detection['recall']:.3f}); "
          f"mean-diameter error {100 * sizes['mean_diameter_rel_error']:+.1f} %; "
          f"{scores['wall_time_s']:.0f} s. Report: {args.out / 'run' / 'report.html'}")
    return 0
