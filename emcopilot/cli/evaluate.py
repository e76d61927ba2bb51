"""``emcopilot evaluate``: score a run's particle table against human truth."""
from __future__ import annotations

import json
from pathlib import Path

from . import pixel_size


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="precision/recall/F1 and size errors of a run against truth files",
        description="Match the objects of a run's particles.csv one-to-one to truth (atom points, YOLO boxes "
                    "or label masks) and print per-image and pooled precision, recall, F1 and mean-diameter "
                    "error; write the same as JSON.")
    parser.add_argument("--pred", required=True, type=Path, metavar="PARTICLES",
                        help="particles.csv (or .parquet, or the run folder) of a segment/run/extract output")
    parser.add_argument("--truth", required=True, nargs="+", type=Path, metavar="PATH",
                        help="truth files or folders holding them")
    parser.add_argument("--format", required=True, choices=("points", "yolo", "masks"),
                        help="points: CSV with X (column), Y (row); yolo: <stem>.txt with normalised "
                             "'class cx cy w h'; masks: label or binary .tif images")
    radius = parser.add_mutually_exclusive_group()
    radius.add_argument("--radius-px", type=float, default=None, help="point match radius in pixels (default 3)")
    radius.add_argument("--radius-nm", type=float, default=None, help="point match radius in nm (needs a pixel size)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="least IoU of a box/mask match (0.5)")
    parser.add_argument("--pixel-size-nm", type=pixel_size, default=None,
                        help="pixel size when particles.csv has no nm columns (for --radius-nm)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of the input images (YOLO truth needs each image's size; default: the "
                             "run's masks/ folder)")
    parser.add_argument("--json", type=Path, default=None, dest="json_out",
                        help="where to write the JSON report (default: evaluation.json next to --pred)")
    return parser


def run(args) -> int:
    from ..core.errors import InputError
    from ..analysis.evaluate import EvaluationSettings, evaluate_run, format_table

    for name in ("radius_px", "radius_nm", "pixel_size_nm"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not 0 < args.iou_threshold <= 1:
        raise InputError(f"--iou-threshold must be in (0, 1], got {args.iou_threshold}")
    radius_px = args.radius_px if args.radius_px is not None or args.radius_nm is not None else 3.0
    settings = EvaluationSettings(format=args.format, iou_threshold=args.iou_threshold, radius_px=radius_px,
                                  radius_nm=args.radius_nm, pixel_size_nm=args.pixel_size_nm,
                                  images_dir=args.images)
    report = evaluate_run(args.pred, args.truth, settings)
    print(format_table(report))
    out = args.json_out or (Path(report["pred"]).parent / "evaluation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0
