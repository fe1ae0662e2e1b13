"""Our fixes to installed releases of OpenCLIP's trainer and clip_benchmark (the repository's ``patches/*.patch``,
shipped in the wheel): which ones the installed versions take, whether they are applied, applying and reverting them
(pure Python: no ``git`` or ``patch`` needed), and the one warning at registration when a fix is missing.
``python -m open_clip_elip.patches status|apply|revert`` is the command (docs/patches.md).

A patch is a unified diff with ``a/``/``b/`` paths relative to the folder its distribution is installed in
(``site-packages``), after a header whose ``# Package:`` line is a requirement naming the distribution and the
versions the patch was checked on (``# Package: open_clip_torch>=3.0.0,<=3.3.0``). A fix is *applied* when every
hunk's patched text is in its file, *missing* when every hunk's original text is, and *changed* otherwise (the
files are neither the release nor the patched release).
"""
from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

COMMAND = "python -m open_clip_elip.patches apply"
APPLIED, MISSING, CHANGED, OTHER_VERSION, NOT_INSTALLED = "applied", "missing", "changed", "other version", "absent"
PACKAGE_LINE = re.compile(r"^# Package: *([A-Za-z0-9._-]+) *(\S*) *$", re.MULTILINE)
HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class FixError(Exception):
    """A fix that cannot be read, applied or reverted here, and why."""


@dataclass(frozen=True)
class Hunk:
    """One hunk: the file it changes, its text before and after, and the line each starts on."""
    path: str
    before: str
    after: str
    before_line: int
    after_line: int


@dataclass(frozen=True)
class Fix:
    """One patch file: its name, the distribution and the versions it is for, and its hunks."""
    name: str
    distribution: str
    versions: SpecifierSet
    hunks: tuple

    @property
    def requirement(self) -> str:
        return f"{self.distribution}{self.versions}"


def patch_dir() -> Path:
    """Where the patches are: ``open_clip_elip/_patches`` in a wheel (``setup.py`` copies them there), the
    repository's ``patches/`` in a source tree or an editable install."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "_patches"
    return shipped if shipped.is_dir() else package.parents[1] / "patches"


def parse(name: str, text: str) -> Fix:
    """A ``Fix`` from a patch's name and text (header lines, then ``--- a/``, ``+++ b/`` and ``@@`` hunks)."""
    match = PACKAGE_LINE.search(text.split("\n--- ")[0])
    if match is None:
        raise FixError(f"{name}: no '# Package: NAME<versions>' header line (e.g. '# Package: clip_benchmark==1.6.2')")
    if not match.group(2):
        raise FixError(f"{name}: its '# Package:' line names no versions; say which it was checked on")
    versions = SpecifierSet(match.group(2))
    lines, hunks, path, i = text.split("\n"), [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ b/"):
            path = line[len("+++ b/"):]
        header = HUNK_HEADER.match(line)
        if header and path:
            old_start, old_count, new_start, new_count = header.groups()
            left, right = int(old_count or 1), int(new_count or 1)
            before, after = [], []
            while left or right:
                i += 1
                kind = lines[i][:1] if i < len(lines) else ""
                if kind not in (" ", "-", "+") or (kind != "+" and not left) or (kind != "-" and not right):
                    raise FixError(f"{name}: the hunk at line {old_start} of {path} does not match its header")
                body = lines[i][1:] + "\n"
                if kind != "+":
                    before.append(body)
                    left -= 1
                if kind != "-":
                    after.append(body)
                    right -= 1
            hunks.append(Hunk(path, "".join(before), "".join(after), int(old_start), int(new_start)))
        i += 1
    if not hunks:
        raise FixError(f"{name}: no hunks")
    return Fix(name, match.group(1), versions, tuple(hunks))


def load(paths: list[Path] | None = None) -> list[Fix]:
    """The fixes in ``paths`` (default: every ``*.patch`` of ``patch_dir()``, in name order)."""
    return [parse(p.name, p.read_bytes().decode()) for p in (paths or sorted(patch_dir().glob("*.patch")))]


def find_distribution(name: str, path: list[str] | None = None) -> metadata.Distribution | None:
    """The installed distribution ``name``, searched in ``path`` (default: ``sys.path``), or None."""
    return next(iter(metadata.distributions(name=name, path=path or sys.path)), None)


def _contains(text: str, block: str) -> bool:
    return ("\n" + block) in ("\n" + text)


def _files(fix: Fix, root: Path) -> dict:
    """Each file the fix changes: its text, or None where it does not exist."""
    return {h.path: (root / h.path).read_bytes().decode() if (root / h.path).is_file() else None for h in fix.hunks}


def status(fix: Fix, path: list[str] | None = None) -> tuple:
    """``(state, distribution or None)``: APPLIED, MISSING, CHANGED, OTHER_VERSION (the installed version is not
    one the fix is for) or NOT_INSTALLED."""
    dist = find_distribution(fix.distribution, path)
    if dist is None:
        return NOT_INSTALLED, None
    if not fix.versions.contains(dist.version, prereleases=True):
        return OTHER_VERSION, dist
    files = _files(fix, Path(dist.locate_file("")))
    for side, state in (("after", APPLIED), ("before", MISSING)):
        if all(files[h.path] is not None and _contains(files[h.path], getattr(h, side)) for h in fix.hunks):
            return state, dist
    return CHANGED, dist


def _replace(text: str, old: str, new: str, line: int) -> str:
    """``text`` with the occurrence of the block ``old`` that starts nearest to ``line`` (1-based) replaced."""
    padded, starts, at = "\n" + text, [], 0
    while (at := padded.find("\n" + old, at)) >= 0:
        starts.append(at)
        at += 1
    at = min(starts, key=lambda s: abs(padded.count("\n", 0, s + 1) - line))  # "\n" + text: `at` is also text's index
    return text[:at] + new + text[at + len(old):]


def apply(fix: Fix, path: list[str] | None = None, revert: bool = False) -> str:
    """Apply (or revert) one fix to the installed distribution it names; returns what was done. Raises
    ``FixError`` if its files are neither the release nor the patched release."""
    state, dist = status(fix, path)
    name = fix.distribution
    if state == NOT_INSTALLED:
        return f"skipped ({name} is not installed)"
    if state == OTHER_VERSION:
        return f"skipped (for {fix.requirement}, but {name} {dist.version} is installed)"
    root = Path(dist.locate_file(""))
    if state == CHANGED:
        raise FixError(f"{fix.name} does not apply to {name} {dist.version} in {root}: its files differ from both "
                       f"the release and the patched release (reinstall {name}=={dist.version}, then apply again)")
    if state == (MISSING if revert else APPLIED):
        return f"already {'reverted' if revert else 'applied'}"
    texts = _files(fix, root)
    for hunk in sorted(fix.hunks, key=lambda h: h.after_line if revert else h.before_line, reverse=True):
        old, new = (hunk.after, hunk.before) if revert else (hunk.before, hunk.after)
        texts[hunk.path] = _replace(texts[hunk.path], old, new, hunk.after_line if revert else hunk.before_line)
    for file, text in texts.items():
        try:
            (root / file).write_bytes(text.encode())
        except OSError as exc:
            raise FixError(f"{fix.name}: cannot write {root / file} ({exc}); run the command as a user who may "
                           "write to that environment") from exc
    return "reverted" if revert else "applied"


def missing(path: list[str] | None = None) -> list[str]:
    """The names of the fixes that the installed versions take but lack."""
    return [fix.name for fix in load() if status(fix, path)[0] == MISSING]


def warn_missing(path: list[str] | None = None) -> None:
    """One warning naming the fixes the installed versions take but lack, with the command that applies them
    (reads a few small files; never raises)."""
    try:
        names = missing(path)
        if names:
            warnings.warn(f"open_clip_elip: the installed packages lack {len(names)} of our fixes "
                          f"({', '.join(names)}); `{COMMAND}` applies them", RuntimeWarning, stacklevel=2)
    except Exception:  # a warning about fixes must never break the registration
        pass
