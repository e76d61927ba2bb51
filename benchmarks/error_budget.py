"""What limits the label-free loop's accuracy: one set, the loop and its oracles side by side.

Each row changes one thing and is scored the same way (``emcopilot evaluate``
against the human labels; pooled and per image):

- ``loop``: the recipe as a user runs it (``closed_loop.py``);
- ``scale``: the same with each image's pixel size taken from its human boxes
  (the scale estimate's share; single-atom images are calibrated, so the row is
  the loop itself and is skipped);
- ``priors``: the human labels as the run's priors (``--priors-from``): the
  prior extractor's share;
- ``budget``: the training profile's images, steps and time cap times
  ``--budget-factor``: the training budget's share;
- ``supervised``, ``supervised-budget``: the recipe's own U-Net trained on the
  human labels of the other folds (``supervised_baseline.py --recipe``; particle
  images at the scale their boxes imply), at the recipe's budget and at
  ``--budget-factor`` times its steps and time cap: the ceiling this network
  reaches with perfect labels.

Usage::

    python benchmarks/error_budget.py [DATA] --set ardagen-haadf|ardagen-bf|acstem \\
        [--rows loop scale priors budget supervised supervised-budget] [--budget-factor 4] \\
        [--folds 4] [--budget-folds 2] [--work DIR] [--out results/error_budget.json]

Rows already in ``--out`` (same set and settings), or whose JSON is already in
the work folder, are kept, so an interrupted budget resumes with the rows it lacks. Prints a table; the JSON holds every
row's pooled scores, per-image F1, wall time and command.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = ("loop", "scale", "priors", "budget", "supervised", "supervised-budget")
RECIPES = {"ardagen-haadf": "nanoparticles-haadf", "ardagen-bf": "nanoparticles-bf-stem",
           "acstem": "single-atom-catalyst-haadf"}


def row_command(row: str, args, work: Path) -> tuple[list[str], Path]:
    """The benchmark command of one row and the JSON it writes."""
    out = work / f"{row}.json"
    if row.startswith("supervised"):
        command = [sys.executable, str(HERE / "supervised_baseline.py"), "--data", str(args.data), "--sets", args.set,
                   "--recipe", RECIPES[args.set],
                   "--folds", str(args.budget_folds or args.folds if row == "supervised-budget" else args.folds), "--threads", str(args.threads),
                   "--oracle-scale", "--out", str(out)]
        if row == "supervised-budget":
            from emcopilot.core.recipe import load_recipe

            profile = load_recipe(RECIPES[args.set]).profile()
            command += ["--steps", str(int(round(profile["segmenter_steps"] * args.budget_factor)))]
            if profile.get("max_minutes"):
                command += ["--max-minutes", str(profile["max_minutes"] * args.budget_factor)]
        return command, out
    command = [sys.executable, str(HERE / "closed_loop.py"), str(args.data), "--set", args.set,
               "--work", str(work / row), "--out", str(out)]
    command += {"loop": [], "scale": ["--oracle-scale"], "priors": ["--human-priors"],
                "budget": ["--budget", str(args.budget_factor)]}[row]
    return command, out


def summarise(row: str, result: dict) -> dict:
    """Pooled scores and per-image F1 of one row, from either benchmark's JSON."""
    if row.startswith("supervised"):
        result = result["sets"][0]
        per_image = {item["image"]: item["f1"] for item in result["per_image"]}
        extra = {"steps_trained": result["steps_trained"], "train_seconds": round(result["train_seconds"], 1)}
    else:
        per_image = {item["image"]: item["f1"] for item in result.get("per_image") or []}
        extra = {"stage_times_s": result.get("stage_times_s")}
    pooled = result["pooled"]
    keys = ("f1", "precision", "recall", "mean_diameter_rel_error", "ks_statistic", "near_misses")
    return {"pooled": {key: pooled.get(key) for key in keys if key in pooled}, "per_image_f1": per_image, **extra}


def table(rows: dict) -> str:
    lines = ["| row | F1 | precision | recall | F1 had the near misses been placed | mean-diameter error | "
             "lowest image F1 | wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        pooled, per_image = row["pooled"], row["per_image_f1"]
        size = pooled.get("mean_diameter_rel_error")
        worst = min(per_image.items(), key=lambda item: item[1]) if per_image else ("", float("nan"))
        placed = (pooled.get("near_misses") or {}).get("f1_if_placed")
        lines.append(f"| {name} | {pooled['f1']:.3f} | {pooled['precision']:.3f} | {pooled['recall']:.3f} | "
                     f"{'' if placed is None else f'{placed:.3f}'} | "
                     f"{'' if size is None else f'{100 * size:+.1f} %'} | {worst[1]:.2f} ({worst[0]}) | "
                     f"{row['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--set", choices=sorted(RECIPES), required=True)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--budget-factor", type=float, default=4.0)
    parser.add_argument("--folds", type=int, default=4, help="supervised rows: folds over the images")
    parser.add_argument("--budget-folds", type=int, help="the supervised-budget row's folds (default: --folds)")
    parser.add_argument("--threads", type=int, default=2, help="supervised rows: torch threads")
    parser.add_argument("--work", type=Path, help="keep each row's run here (default: a folder beside --out)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/error_budget.json"))
    args = parser.parse_args(argv)

    work = args.work or args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    settings = {"set": args.set, "recipe": RECIPES[args.set], "budget_factor": args.budget_factor,
                "folds": args.folds, "budget_folds": args.budget_folds or args.folds}
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    if report.get("settings") != settings:
        report = {"settings": settings, "rows": {}}
    for row in args.rows:
        if row in report["rows"] or (row == "scale" and args.set == "acstem"):
            continue
        command, out = row_command(row, args, work)
        if not out.exists():  # a row's own JSON in the work folder is its measurement: not redone
            print(f"[{row}] {' '.join(command)}", file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
        result = json.loads(out.read_text())
        wall_s = result.get("wall_time_s") or result.get("sets", [{}])[0].get("seconds")
        report["rows"][row] = {**summarise(row, result), "wall_s": round(float(wall_s), 1),
                               "command": " ".join(command[1:])}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # each row lands as soon as it is measured
    ordered = {name: report["rows"][name] for name in ROWS if name in report["rows"]}
    print(f"{args.set} ({RECIPES[args.set]}), budget x{args.budget_factor:g}, {args.folds} folds")
    print(table(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
