"""Our fixes to the installed OpenCLIP trainer and clip_benchmark: see which the installed versions take, apply them,
or revert them (``make install`` runs ``apply``; docs/patches.md says what each fixes).

    python -m open_clip_elip.patches status|apply|revert [--path DIR] [PATCH ...]

``status`` lists each fix as applied, missing (``apply`` applies it), changed (its files are neither the release
nor the patched release: reinstall that package), for another version, or its package absent; it exits with 1
if a fix is missing or changed. ``apply`` and ``revert`` change only fixes made for the installed versions, and
do nothing to a fix already in the state asked for; they exit with 1 if a fix could not be applied or reverted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.fixes import CHANGED, MISSING, OTHER_VERSION, FixError, apply, load, patch_dir, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.patches", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("status", "apply", "revert"))
    parser.add_argument("patches", nargs="*", type=Path, help=f"patch files (default: all of them, in {patch_dir()})")
    parser.add_argument("--path", action="append", help="look for the packages in this folder, not sys.path")
    args = parser.parse_intermixed_args(argv)  # the patches may follow --path
    failed = 0
    try:
        fixes = load(args.patches)
    except (FixError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for fix in fixes:
        if args.action == "status":
            state, dist = status(fix, args.path)
            where = f"{dist.metadata['Name']} {dist.version}" if dist else f"{fix.distribution} not installed"
            note = f", it is for {fix.requirement}" if state == OTHER_VERSION else ""
            print(f"{state}: {fix.name} ({where}{note})")
            failed += state in (MISSING, CHANGED)
            continue
        try:
            print(f"{apply(fix, args.path, revert=args.action == 'revert')}: {fix.name}")
        except FixError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
