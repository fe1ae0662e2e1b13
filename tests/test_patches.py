"""patches/apply.py: its patches, and how it applies them (on copies of the installed clip_benchmark and
open_clip_train)."""
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATCHES = sorted((REPO / "patches").glob("*.patch"))
CLIP_BENCHMARK_PATCHES = [p for p in PATCHES if "# Package: clip_benchmark==1.6.2" in p.read_text()]
OPEN_CLIP_PATCHES = [p for p in PATCHES if "# Package: open_clip_torch==3.3.0" in p.read_text()]
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


def apply(site, *args):
    """apply.py on the packages under ``site``, with clip_benchmark's patches unless others are named."""
    patches = [a for a in args if a.endswith(".patch")] or [str(p) for p in CLIP_BENCHMARK_PATCHES]
    flags = [a for a in args if not a.endswith(".patch")]
    return subprocess.run([sys.executable, str(REPO / "patches/apply.py"), "--path", str(site), *flags, *patches],
                          capture_output=True, text=True)


def copy_package(site: Path, version: str, name: str = "clip_benchmark", package: str = "clip_benchmark") -> Path:
    """The installed ``package`` (of distribution ``name``) under ``site``, with a dist-info claiming ``version``."""
    installed = Path(metadata.distribution(name).locate_file(package))
    shutil.copytree(installed, site / package, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return site


@pytest.fixture
def pristine(tmp_path):
    """A copy with the patches reverted (whether or not `make patch-deps` has run on the install)."""
    site = copy_package(tmp_path, "1.6.2")
    assert apply(site, "--revert").returncode == 0
    return site


def test_patches_are_documented_and_applied_to_the_installed_packages():
    assert CLIP_BENCHMARK_PATCHES
    assert OPEN_CLIP_PATCHES
    for patch in PATCHES:
        header = patch.read_text().split("\n--- ")[0]
        assert "# Package: " in header and "# Fixes:" in header and "# Change:" in header
        upstream = re.search(r"^# Upstream: (https://github\.com/\S+) ", header, re.MULTILINE)
        assert upstream and re.findall(r"https?://\S+", header) == [upstream.group(1)], patch.name
    result = subprocess.run([sys.executable, str(REPO / "patches/apply.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"already applied: {p.name}" for p in PATCHES]  # by `make install`


def test_apply_is_idempotent(pristine):
    source = (pristine / LINEAR_PROBE).read_text()
    assert "assert device == 'cuda'" in source

    first = apply(pristine)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied: {p.name}" for p in CLIP_BENCHMARK_PATCHES]
    patched = (pristine / LINEAR_PROBE).read_text()
    assert "assert device == 'cuda'" not in patched and "model.to(device)" in patched

    second = apply(pristine)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [f"already applied: {p.name}" for p in CLIP_BENCHMARK_PATCHES]
    assert (pristine / LINEAR_PROBE).read_text() == patched

    assert apply(pristine, "--revert").returncode == 0
    assert (pristine / LINEAR_PROBE).read_text() == source


def test_refuses_another_version(tmp_path):
    site = copy_package(tmp_path, "1.6.1")
    before = (site / LINEAR_PROBE).read_text()
    result = apply(site)
    assert result.returncode == 1
    assert "made for clip_benchmark 1.6.2, but clip_benchmark 1.6.1 is installed" in result.stderr
    assert (site / LINEAR_PROBE).read_text() == before


def test_refuses_changed_files_and_missing_package(pristine, tmp_path):
    target = pristine / LINEAR_PROBE
    target.write_text(target.read_text().replace("model = model.cuda()", "model = model.cuda()  # edited"))
    patch = CLIP_BENCHMARK_PATCHES[-1]
    result = apply(pristine, str(patch))
    assert result.returncode == 1 and "does not apply" in result.stderr and patch.name in result.stderr
    (tmp_path / "empty").mkdir()
    result = apply(tmp_path / "empty")
    assert result.returncode == 1 and "clip_benchmark is not installed" in result.stderr


def test_open_clip_patches_apply_to_the_release(tmp_path):
    """A copy of the installed open_clip_train, reverted to the release, patched again and reverted."""
    site = copy_package(tmp_path, "3.3.0", "open_clip_torch", "open_clip_train")
    patches = [str(p) for p in OPEN_CLIP_PATCHES]
    reverted = apply(site, "--revert", *patches)
    assert reverted.returncode == 0, reverted.stderr
    release = {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES}
    for path, (before, after) in OPEN_CLIP_CHANGES.items():
        assert before in release[path] and after not in release[path], path

    first = apply(site, *patches)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied: {p.name}" for p in OPEN_CLIP_PATCHES]
    patched = {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES}
    for path, (before, after) in OPEN_CLIP_CHANGES.items():
        assert before not in patched[path] and after in patched[path], path
    second = apply(site, *patches)
    assert second.stdout.splitlines() == [f"already applied: {p.name}" for p in OPEN_CLIP_PATCHES]

    assert apply(site, "--revert", *patches).returncode == 0
    assert {path: (site / path).read_text() for path in OPEN_CLIP_CHANGES} == release
