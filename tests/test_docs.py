"""The documentation is self-contained: nothing in the repository points outside it, and every relative
Markdown link (and heading anchor) in README.md and docs/ resolves to a file of the repository."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# written in two parts so that this file does not match itself
FORBIDDEN = ("../" + "shared", "ELIP" + "-SPEC")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def repository_files():
    """Tracked and untracked, not ignored, files, as git lists them from the repository root (the tests run
    in a clone: `make test`, CI)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def prose_lines(path: Path):
    """(line number, line) of a Markdown file outside fenced code blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, INLINE_CODE.sub("", line)


def links(path: Path):
    for number, line in prose_lines(path):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)
        match = REFERENCE_LINK.match(line)
        if match:
            yield number, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    seen, result = {}, set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_nothing_points_outside_the_repository():
    offenders = []
    for path in repository_files():
        if not path.is_file():  # deleted in the working tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            offenders += [f"{path.relative_to(ROOT)}:{number}: {word}" for word in FORBIDDEN if word in line]
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)


def test_docs_exist():
    names = {path.name for path in DOCS if path.parent.name == "docs"}
    assert {"README.md", "method.md", "options.md", "costs.md", "registration.md", "limits.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_resolve(doc):
    broken = []
    for number, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(ROOT)}:{number}: {target}"
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no heading #{anchor} in {resolved.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_parser_sees_links():
    """Guard against a parser that finds nothing: README.md links into docs/."""
    targets = [target for _, target in links(ROOT / "README.md")]
    assert "docs/method.md" in targets
    assert slug("Your own configs: `OPEN_CLIP_ELIP_CONFIGS`") == "your-own-configs-open_clip_elip_configs"


def test_the_readmes_verdict_tables_are_the_reports():
    """Every verdict table of the committed study (docs/study/headline.md, written by the report from the runs)
    stands in README.md as the report wrote it: the README's verdicts are the report's, adjusted intervals and
    all."""
    headline = (ROOT / "docs" / "study" / "headline.md").read_text()
    tables = ["\n".join(block) for block in _tables(headline.splitlines())]
    assert tables, "docs/study/headline.md has no table"
    readme = (ROOT / "README.md").read_text()
    missing = [t.splitlines()[2] for t in tables if t not in readme]
    assert not missing, f"README.md lacks the report's verdict tables (first rows: {missing}); copy them from " \
                        "docs/study/headline.md"


def _tables(lines):
    block = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            yield block
            block = []
