"""Apply our fixes to installed third-party packages (stdlib only; `make patch-deps` runs it).

    python patches/apply.py [--revert] [--path DIR] [PATCH ...]

Each ``patches/*.patch`` is a unified diff against one release of one distribution, named in its
header line ``# Package: NAME==VERSION``, with paths relative to the folder the distribution is
installed in (``site-packages``) and ``a/``/``b/`` prefixes. It is applied with ``git apply``
(git is on all our machines; ``patch`` is not always). A patch already applied is skipped, so
running this again changes nothing; a patch made for another version than the installed one is
refused (exit status 1) rather than forced onto code it was not written for.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PATCH_DIR = Path(__file__).resolve().parent
PACKAGE_LINE = re.compile(r"^# Package: *([A-Za-z0-9._-]+)==(\S+) *$", re.MULTILINE)


class PatchError(Exception):
    """A patch that cannot be applied (or reverted) here, and why."""


def patch_target(patch: Path) -> tuple[str, str]:
    """``(distribution name, version)`` from the patch's ``# Package: NAME==VERSION`` header line."""
    match = PACKAGE_LINE.search(patch.read_text())
    if match is None:
        raise PatchError(f"{patch.name}: no '# Package: NAME==VERSION' header line")
    return match.group(1), match.group(2)


def find_distribution(name: str, path: list[str] | None) -> metadata.Distribution:
    """The installed distribution ``name``, searched in ``path`` (default: ``sys.path``)."""
    found = next(iter(metadata.distributions(name=name, path=path or sys.path)), None)
    if found is None:
        raise PatchError(f"{name} is not installed (searched {path or 'sys.path'})")
    return found


def git_apply(patch: Path, root: Path, *flags: str) -> bool:
    """Run ``git apply FLAGS PATCH`` in ``root`` as in no repository; True if it succeeded."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    env["GIT_CEILING_DIRECTORIES"] = str(root.parent)  # never use a repository around site-packages
    result = subprocess.run(["git", "apply", *flags, str(patch)], cwd=root, env=env,
                            capture_output=True, text=True)
    return result.returncode == 0


def apply_patch(patch: Path, path: list[str] | None = None, revert: bool = False) -> str:
    """Apply (or revert) one patch to the installed distribution it names; returns what was done."""
    name, version = patch_target(patch)
    dist = find_distribution(name, path)
    if dist.version != version:
        raise PatchError(
            f"{patch.name} was made for {name} {version}, but {name} {dist.version} is installed "
            f"(at {dist.locate_file('')}): install {name}=={version}, or remake the patch for {dist.version}")
    root = Path(dist.locate_file(""))
    done, undo = (["-R"], []) if revert else ([], ["-R"])
    if git_apply(patch, root, "--check", *undo):
        return f"already {'reverted' if revert else 'applied'}"
    if not git_apply(patch, root, "--check", *done):
        raise PatchError(f"{patch.name} does not apply to {name} {version} in {root}: its files differ from "
                         f"both the release and the patched release (reinstall {name}=={version})")
    if not git_apply(patch, root, *done):
        raise PatchError(f"{patch.name}: git apply failed in {root}")
    return "reverted" if revert else "applied"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patches", nargs="*", type=Path, help="patch files (default: patches/*.patch)")
    parser.add_argument("--revert", action="store_true", help="undo the patches instead")
    parser.add_argument("--path", action="append", help="look for the packages in this folder, not sys.path")
    args = parser.parse_args(argv)
    failed = 0
    for patch in args.patches or sorted(PATCH_DIR.glob("*.patch")):
        try:
            print(f"{apply_patch(patch, args.path, args.revert)}: {patch.name}")
        except PatchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
