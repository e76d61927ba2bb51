"""The ``emcopilot`` command line.

Each subcommand is a module of this package with ``add_parser(subparsers)``
and ``run(args) -> int``; :data:`COMMANDS` lists them in help order. Modules
are imported when the parser is built, so they must import heavy libraries
inside ``run`` only.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from .. import __version__
from ..core.errors import EmcopilotError

COMMANDS = ("plugins", "recipes", "validate", "extract", "run", "segment", "evaluate", "demo")


def pixel_size(text: str, what: str = "pixel size") -> float:
    """An argparse type: a finite, positive pixel size in nm (``inf``, ``nan``, 0 and negatives refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} in nm, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a {what} must be a finite number of nm above 0, got {text!r}")
    return value


def scale_bar_length(text: str) -> float:
    """An argparse type: a scale bar's length in nm, checked as :func:`pixel_size`."""
    return pixel_size(text, "scale bar length")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input`` and ``--recursive``, the same for every command that reads micrographs."""
    parser.add_argument("--input", "-i", nargs="+", required=True, metavar="PATH", help="files or folders")
    parser.add_argument("--recursive", "-r", action="store_true",
                        help="also read the sub-folders of input folders (linked folders are not followed)")


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pixel-size-nm`` and ``--calibration``, the same for every command that reads micrographs."""
    parser.add_argument("--pixel-size-nm", type=pixel_size, help="pixel size for files without calibration (overrides)")
    parser.add_argument("--calibration", metavar="CSV",
                        help="per-file pixel sizes, a CSV with the header 'image,pixel_size_nm' (file names or "
                             "paths); an entry wins over the file's calibration and --pixel-size-nm")
    parser.add_argument("--scale-bar-nm", type=scale_bar_length, metavar="NM",
                        help="the length of the scale bar burned into exported images (JPEG/PNG/TIFF) without "
                             "calibration, when its label cannot be read; the bar is found and measured in each "
                             "image")


def read_calibration_arguments(args, inputs=()):
    """The checked ``--pixel-size-nm`` and the ``--calibration`` table (or ``None``) of parsed ``args``.

    Table rows that match none of ``inputs`` are named in a warning (a misspelt file name would
    otherwise leave that image uncalibrated without a word).
    """
    from ..io.calibration import read_calibration_table
    from ..core.errors import InputError

    if args.pixel_size_nm is not None and not args.pixel_size_nm > 0:
        raise InputError(f"--pixel-size-nm must be positive, got {args.pixel_size_nm}")
    table = read_calibration_table(args.calibration) if args.calibration else None
    if table is not None and inputs:
        unused = table.unused(inputs)
        if unused:
            logging.getLogger("emcopilot").warning(
                "%s: %d row(s) match no input file: %s%s", table.source, len(unused), ", ".join(unused[:5]),
                ", ..." if len(unused) > 5 else "")
    return args.pixel_size_nm, table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emcopilot",
        description="Label-free segmentation and size statistics of electron micrographs.")
    parser.add_argument("--version", action="version", version=f"emcopilot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full trace of an error (for a bug report; also EMCOPILOT_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (e.g. captured): nothing to flush
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    debug = getattr(args, "traceback", False) or os.environ.get("EMCOPILOT_DEBUG", "") not in ("", "0")
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:  # `emcopilot plugins --json | head`: the reader left; say nothing more
        _silence_stdout()
        return 141  # as a program stopped by SIGPIPE
    except EmcopilotError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # --out is a file, a folder cannot be written, the disk is full, ...
        if debug:
            traceback.print_exc()
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
