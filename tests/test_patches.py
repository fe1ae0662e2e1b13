"""Our fixes (``patches/``) and ``python -m open_clip_elip.patches``: the patches, how they are applied and reverted
(on copies of the installed clip_benchmark and open_clip_train, ``git apply`` as the reference), and the warning at
registration when one is missing."""
import os
import re
import shutil
import subprocess
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import open_clip_elip
from open_clip_elip.core import fixes
from open_clip_elip.patches import main

REPO = Path(__file__).resolve().parents[1]
PATCHES = sorted((REPO / "patches").glob("*.patch"))
CLIP_BENCHMARK_PATCHES = [p for p in PATCHES if p.name.startswith("clip_benchmark-")]
OPEN_CLIP_PATCHES = [p for p in PATCHES if p.name.startswith("open_clip_torch-")]
LINEAR_PROBE = Path("clip_benchmark/metrics/linear_probe.py")
# open_clip_train's files and one line each of them has in the release (first) and once patched (second)
OPEN_CLIP_CHANGES = {
    "open_clip_train/main.py": ("device_ids=[device], **ddp_args)",
                                "device_ids = None if device.type == 'cpu' else [device]"),
    "open_clip_train/data.py": ("            wds.shuffle(\n",
                                "seed = self.seed + epoch + (self.rank * 2 ** 16 + worker) * 2 ** 32"),
    "open_clip_train/zero_shot.py": ("sum(0, keepdim=True).cpu().numpy())",
                                     "return [correct[:k].reshape(-1).float().sum().item()"),
}


def command(capsys, action, site, *patches):
    """``python -m open_clip_elip.patches ACTION --path SITE [PATCH ...]`` (clip_benchmark's patches unless others
    are named): ``(exit status, stdout lines, stderr)``."""
    status = main([action, "--path", str(site), *map(str, patches or CLIP_BENCHMARK_PATCHES)])
    out = capsys.readouterr()
    return status, out.out.splitlines(), out.err


def copy_package(site: Path, version: str, name: str = "clip_benchmark", package: str = "clip_benchmark") -> Path:
    """The installed ``package`` (of distribution ``name``) under ``site``, with a dist-info claiming ``version``."""
    installed = Path(metadata.distribution(name).locate_file(package))
    shutil.copytree(installed, site / package, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return site


@pytest.fixture
def pristine(tmp_path, capsys):
    """A copy with the patches reverted (whether or not `make install` has applied them to the install)."""
    site = copy_package(tmp_path, "1.6.2")
    assert command(capsys, "revert", site)[0] == 0
    return site


def test_patches_are_documented_and_applied_to_the_installed_packages(capsys):
    assert CLIP_BENCHMARK_PATCHES and OPEN_CLIP_PATCHES
    for patch in PATCHES:
        header = patch.read_text().split("\n--- ")[0]
        assert "# Fixes:" in header and "# Change:" in header
        upstream = re.search(r"^# Upstream: (https://github\.com/\S+) ", header, re.MULTILINE)
        assert upstream and re.findall(r"https?://\S+", header) == [upstream.group(1)], patch.name
        package = re.search(r"^# Package: (\S+)$", header, re.MULTILINE).group(1)
        assert package == ("open_clip_torch>=3.0.0,<=3.3.0" if patch in OPEN_CLIP_PATCHES else "clip_benchmark==1.6.2")
    assert [f.name for f in fixes.load()] == [p.name for p in PATCHES]  # the CLI's default: all of them
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"applied: {p.name}" for p in PATCHES]  # by `make install`


def test_apply_is_idempotent_and_revert_restores_the_release(pristine, capsys):
    source = (pristine / LINEAR_PROBE).read_text()
    assert "assert device == 'cuda'" in source
    status, lines, _ = command(capsys, "status", pristine)
    assert status == 1 and [line.split(" (")[0] for line in lines] == [f"missing: {p.name}"
                                                                        for p in CLIP_BENCHMARK_PATCHES]

    assert command(capsys, "apply", pristine)[:2] == (0, [f"applied: {p.name}" for p in CLIP_BENCHMARK_PATCHES])
    patched = (pristine / LINEAR_PROBE).read_text()
    assert "assert device == 'cuda'" not in patched and "model.to(device)" in patched
    assert command(capsys, "apply", pristine)[:2] == (0, [f"already applied: {p.name}"
                                                          for p in CLIP_BENCHMARK_PATCHES])
    assert (pristine / LINEAR_PROBE).read_text() == patched
    assert command(capsys, "status", pristine)[0] == 0

    assert command(capsys, "revert", pristine)[:2] == (0, [f"reverted: {p.name}" for p in CLIP_BENCHMARK_PATCHES])
    assert (pristine / LINEAR_PROBE).read_text() == source
    assert command(capsys, "revert", pristine)[:2] == (0, [f"already reverted: {p.name}"
                                                           for p in CLIP_BENCHMARK_PATCHES])


def test_another_version_is_skipped_and_left_alone(tmp_path, capsys):
    site = copy_package(tmp_path, "1.6.1")
    before = (site / LINEAR_PROBE).read_text()
    status, lines, _ = command(capsys, "apply", site)
    assert status == 0
    assert lines == [f"skipped (for clip_benchmark==1.6.2, but clip_benchmark 1.6.1 is installed): {p.name}"
                     for p in CLIP_BENCHMARK_PATCHES]
    assert (site / LINEAR_PROBE).read_text() == before
    status, lines, _ = command(capsys, "status", site)
    assert status == 0 and all(line.startswith("other version: ") for line in lines)
    assert fixes.missing([str(site)]) == []


def test_changed_files_are_refused_and_a_missing_package_skipped(pristine, tmp_path, capsys):
    target = pristine / LINEAR_PROBE
    target.write_text(target.read_text().replace("model = model.cuda()", "model = model.cuda()  # edited"))
    edited = target.read_text()
    patch = CLIP_BENCHMARK_PATCHES[-1]
    status, _, err = command(capsys, "apply", pristine, patch)
    assert status == 1 and "does not apply" in err and patch.name in err and "reinstall clip_benchmark" in err
    assert target.read_text() == edited
    status, lines, _ = command(capsys, "status", pristine, patch)
    assert status == 1 and lines[0].startswith(f"changed: {patch.name}")
    (tmp_path / "empty").mkdir()
    status, lines, _ = command(capsys, "apply", tmp_path / "empty")
    assert status == 0 and lines == [f"skipped (clip_benchmark is not installed): {p.name}"
                                     for p in CLIP_BENCHMARK_PATCHES]


def git_apply(root: Path, patch: Path, *flags: str) -> None:
    """The reference: ``git apply`` in ``root`` as in no repository."""
    subprocess.run(["git", "apply", *flags, str(patch)], cwd=root, check=True, capture_output=True,
                   env={**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
                        "GIT_CEILING_DIRECTORIES": str(root.parent)})


@pytest.mark.parametrize("version", ["3.0.0", "3.3.0"])
def test_open_clip_patches_apply_as_git_does(tmp_path, capsys, version):
    """A copy of the installed open_clip_train, reverted to the release, patched by us and by ``git apply``."""
    site = copy_package(tmp_path / "ours", version, "open_clip_torch", "open_clip_train")
    assert command(capsys, "revert", site, *OPEN_CLIP_PATCHES)[0] == 0
    release = {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES}
    for path, (before, after) in OPEN_CLIP_CHANGES.items():
        assert before in release[path] and after not in release[path], path
    reference = tmp_path / "git"
    shutil.copytree(site, reference)
    for patch in OPEN_CLIP_PATCHES:
        git_apply(reference, patch)

    assert command(capsys, "apply", site, *OPEN_CLIP_PATCHES)[:2] == (0, [f"applied: {p.name}"
                                                                          for p in OPEN_CLIP_PATCHES])
    patched = {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES}
    assert patched == {path: (reference / path).read_text() for path in OPEN_CLIP_CHANGES}
    for path, (before, after) in OPEN_CLIP_CHANGES.items():
        assert before not in patched[path] and after in patched[path], path
    assert command(capsys, "apply", site, *OPEN_CLIP_PATCHES)[1] == [f"already applied: {p.name}"
                                                                     for p in OPEN_CLIP_PATCHES]
    assert command(capsys, "revert", site, *OPEN_CLIP_PATCHES)[0] == 0
    assert {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES} == release


def test_a_hunk_is_applied_where_its_header_says_when_its_text_occurs_twice(tmp_path):
    patch = ("# Package: demo==1.0\n--- a/m.py\n+++ b/m.py\n@@ -5,2 +5,2 @@\n x = 1\n-y = 2\n+y = 3\n")
    fix = fixes.parse("demo.patch", patch)
    assert fix.hunks == (fixes.Hunk("m.py", "x = 1\ny = 2\n", "x = 1\ny = 3\n", 5, 5),)
    site = tmp_path / "site"
    (site / "demo-1.0.dist-info").mkdir(parents=True)
    (site / "demo-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    lines = ["x = 1", "y = 2", "", "", "x = 1", "y = 2", "z = 0"]
    (site / "m.py").write_text("\n".join(lines) + "\n")
    assert fixes.apply(fix, [str(site)]) == "applied"
    assert (site / "m.py").read_text().splitlines() == lines[:5] + ["y = 3", "z = 0"]  # the one at line 5
    assert fixes.apply(fix, [str(site)], revert=True) == "reverted"
    assert (site / "m.py").read_text().splitlines() == lines


@pytest.mark.parametrize("header, error", [
    ("# Fixes: nothing\n", "no '# Package: NAME<versions>' header line"),
    ("# Package: demo\n", "names no versions"),
])
def test_a_patch_without_its_versions_is_refused(header, error):
    with pytest.raises(fixes.FixError, match=error):
        fixes.parse("bad.patch", header + "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(fixes.FixError, match="does not match its header"):
        fixes.parse("short.patch", "# Package: demo==1\n--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n-a\n+b\n")


def test_one_warning_names_the_missing_fixes_and_the_command(pristine, capsys):
    with pytest.warns(RuntimeWarning) as record:
        fixes.warn_missing([str(pristine)])
    assert len(record) == 1
    message = str(record[0].message)
    assert all(p.name in message for p in CLIP_BENCHMARK_PATCHES) and "lack 2 of our fixes" in message
    assert "`python -m open_clip_elip.patches apply`" in message
    command(capsys, "apply", pristine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also: a warning would raise here
        fixes.warn_missing([str(pristine)])


def test_the_warning_never_raises(pristine, monkeypatch, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # -W error: the warning itself would raise
        fixes.warn_missing([str(pristine)])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.patch").write_text("not a patch\n")
    monkeypatch.setattr(fixes, "patch_dir", lambda: tmp_path / "broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixes.warn_missing()


def test_registration_warns_about_missing_fixes(monkeypatch):
    monkeypatch.setattr(fixes, "missing", lambda path=None: ["open_clip_torch-0003-zero-shot-accuracy-numpy2.patch"])
    with pytest.warns(RuntimeWarning, match="lack 1 of our fixes .open_clip_torch-0003"):
        open_clip_elip.register()
