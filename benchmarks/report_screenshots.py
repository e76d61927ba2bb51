"""Screenshots of run reports in a headless Chromium, to look at, with what the page holds.

For each run folder given, ``report.html`` is opened in headless Chromium
(Debian's ``chromium`` package, or ``chromium-browser`` / ``google-chrome``);
the DOM after load is checked for console messages (the report has no scripts,
so any message is a fault), images and warning boxes are counted, and a
full-length screenshot is written beside the JSON summary.

    python benchmarks/report_screenshots.py RUN [RUN ...] --out shots/ [--width 1200 --height 6000]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        raise SystemExit(f"no headless browser found (tried {', '.join(BROWSERS)}); install chromium")
    return found


def shoot(run: Path, out: Path, width: int, height: int) -> dict:
    page = run / "report.html"
    if not page.is_file():
        return {"run": str(run), "error": "no report.html"}
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--enable-logging=stderr", "--v=0"]
        dom = subprocess.run([browser(), *flags, "--dump-dom", page.resolve().as_uri()], capture_output=True,
                             text=True, timeout=300)
        shot = out / f"{'-'.join(run.resolve().parts[-2:])}.png"
        subprocess.run([browser(), *flags, f"--window-size={width},{height}", f"--screenshot={shot}",
                        page.resolve().as_uri()], capture_output=True, text=True, timeout=300, check=False)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    warnings = re.findall(r"<div class=\"warning\"[^>]*>(.*?)</div>", dom.stdout, flags=re.S)
    return {"run": str(run), "screenshot": str(shot) if shot.exists() else None, "images": dom.stdout.count("<img"),
            "warning_boxes": len(warnings), "warnings": [re.sub(r"<[^>]+>", "", w).strip() for w in warnings],
            "console_messages": console, "bytes": page.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [shoot(run, args.out, args.width, args.height) for run in args.runs]
    (args.out / "report_screenshots.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(json.dumps({key: row.get(key) for key in ("run", "images", "warning_boxes", "console_messages",
                                                         "screenshot", "error")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
