"""The install check: what a pip user gets. Run by ``make install-check`` (``.ci/run`` runs it after ``make test``),
never by pytest: it takes a venv with torch (about 5.5 GB, made once and reused) and some minutes.

    python tests/install_check.py [--venv DIR] [--work DIR]

1. ``python -m build`` makes the sdist and the wheel of this repository.
2. Each of the wheel, the sdist and the editable source tree is installed in turn into the one venv (torch first,
   at the versions of the Makefile; OpenCLIP and the rest from the registry, as ``pip install`` gives them; only
   this package is uninstalled between modes), and a fresh interpreter checks that ``import open_clip`` alone
   registers the ``-elip``, ``-evit`` and ``-tome`` models, that the start-up hook's ``.pth`` is in site-packages,
   and that ``python -m open_clip_elip.patches`` finds the fixes (shipped in the package, or the repository's).
3. With the wheel, the issue's "done when": the fixes the installed OpenCLIP takes are missing and named in one
   warning at ``import open_clip``; the unpatched trainer's zero-shot crashes under the registry's numpy; after
   ``python -m open_clip_elip.patches apply`` (the one documented fix command), no warning, the README's usage
   snippet runs, and two trainer steps of an ``-elip`` model with ``--imagenet-val`` and ``--val-data`` finish
   with a zero-shot accuracy and a validation loss.

Exits with 0 when all of it holds; otherwise prints what failed and exits with 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # as the Makefile: the versions on our machines' disks
FAMILY_NAMES = ["ViT-B-16-elip", "ViT-B-16-evit", "ViT-B-16-tome"]
NUMPY_CRASH = "only 0-dimensional arrays can be converted to Python scalars"
FIX_COMMAND = "python -m open_clip_elip.patches apply"

PROBE = """
import json, sys, sysconfig, warnings
from pathlib import Path
warnings.simplefilter("always")
import open_clip
from open_clip_elip.core import fixes
print(json.dumps({"names": [n for n in open_clip.list_models() if n in NAMES],
                  "module": sys.modules["open_clip_elip"].__file__,
                  "pth": Path(sysconfig.get_path("purelib"), "open_clip_elip.pth").is_file(),
                  "patch_dir": str(fixes.patch_dir()), "patches": sorted(f.name for f in fixes.load()),
                  "site": sysconfig.get_path("purelib")}))
"""

DATA = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
rng = np.random.default_rng(0)
def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path
for split, count in (("train", 8), ("val", 4)):
    rows = [f"{image(root / split / f'{i}.png')},a photo of a {('cat', 'dog')[i % 2]}" for i in range(count)]
    (root / f"{split}.csv").write_text("filepath,title\\n" + "\\n".join(rows) + "\\n")
for i in range(6):
    image(root / "imagenet-val" / f"class{i % 3}" / f"{i}.png")
config = {"embed_dim": 32,
          "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 32, "patch_size": 4},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
          "elip_cfg": {"layout": [1, 1, 1, 1], "keep_ratios": [0.9, 0.65, 0.4]}}
(root / "configs").mkdir(exist_ok=True)
(root / "configs" / "ViT-Check-4-elip.json").write_text(json.dumps(config))
"""

STEPS = """
import sys, torch
checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print(sorted({int(s["step"]) for s in checkpoint["optimizer"]["state"].values()}))
"""


class CheckFailed(Exception):
    pass


def run(*command, ok=True, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``command`` (stdout and stderr captured); raise CheckFailed if ``ok`` and it fails."""
    print("$", " ".join("<code>" if "\n" in str(c) else str(c) for c in command), flush=True)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS", "VIRTUAL_ENV")}
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd,
                            env={**base, "OMP_NUM_THREADS": "1", **(env or {})})
    if ok and result.returncode != 0:
        raise CheckFailed(f"exit status {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}")
    return result


def expect(condition: bool, what: str, detail: object = "") -> None:
    if not condition:
        raise CheckFailed(f"{what}\n{detail}")
    print("ok:", what, flush=True)


def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", venv)
        run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
        run(python, "-m", "pip", "install", "-q", *TORCH, "build")
    return python


def probe(python: Path, work: Path) -> dict:
    result = run(python, "-c", f"NAMES = {FAMILY_NAMES!r}\n{PROBE}", cwd=work)
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_mode(python: Path, work: Path, mode: str, target: Path) -> None:
    run(python, "-m", "pip", "uninstall", "-y", "-q", "open_clip_elip", ok=False)
    run(python, "-m", "pip", "install", "-q", *(["-e"] if mode == "editable" else []), target)
    found = probe(python, work)
    site = Path(found["site"])
    home = REPO / "src" if mode == "editable" else site
    expect(found["names"] == FAMILY_NAMES, f"{mode}: import open_clip alone registers {FAMILY_NAMES}", found)
    expect(found["pth"], f"{mode}: open_clip_elip.pth is in site-packages")
    expect(Path(found["module"]).is_relative_to(home), f"{mode}: open_clip_elip is imported from {home}", found)
    shipped = REPO / "patches" if mode == "editable" else site / "open_clip_elip" / "_patches"
    expect(Path(found["patch_dir"]) == shipped and found["patches"] == sorted(p.name for p in
                                                                               (REPO / "patches").glob("*.patch")),
           f"{mode}: the fixes are found in {shipped}", found)


def trainer(python: Path, data: Path, name: str, ok: bool) -> subprocess.CompletedProcess:
    return run(python, "-m", "open_clip_train.main", "--model", "ViT-Check-4-elip", "--dataset-type", "csv",
               "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title",
               "--train-data", data / "train.csv", "--val-data", data / "val.csv",
               "--imagenet-val", data / "imagenet-val", "--zeroshot-frequency", "1", "--val-frequency", "1",
               "--batch-size", "4", "--epochs", "1", "--workers", "0", "--lr", "1e-3", "--warmup", "1",
               "--precision", "fp32", "--seed", "0", "--logs", data / "logs", "--name", name,
               ok=ok, cwd=data, env={"OPEN_CLIP_ELIP_CONFIGS": str(data / "configs")})


def readme_snippet() -> str:
    """The README's first Python block under "## Using it"."""
    text = (REPO / "README.md").read_text()
    return re.search(r"^## Using it\n.*?```python\n(.*?)```", text, re.MULTILINE | re.DOTALL).group(1)


def check_done_when(python: Path, work: Path) -> None:
    run(python, "-m", "open_clip_elip.patches", "revert")  # a reused venv: back to the releases as pip gives them
    status = run(python, "-m", "open_clip_elip.patches", "status", ok=False)
    expect(status.returncode == 1 and status.stdout.count("missing: open_clip_torch-") == 3,
           "status names the three OpenCLIP fixes as missing", status.stdout)
    imported = run(python, "-c", "import open_clip", cwd=work)
    warnings = [line for line in imported.stderr.splitlines() if "lack" in line and "our fixes" in line]
    expect(len(warnings) == 1 and FIX_COMMAND in warnings[0] and warnings[0].count("open_clip_torch-") == 3,
           f"import open_clip warns once, naming the three fixes and `{FIX_COMMAND}`", imported.stderr)

    data = work / "data"
    run(python, "-c", DATA, data)
    numpy = run(python, "-c", "import numpy; print(numpy.__version__)").stdout.strip()
    crashed = trainer(python, data, "unpatched", ok=False)
    expect(crashed.returncode != 0 and NUMPY_CRASH in crashed.stderr,
           f"without the fixes, the trainer's zero-shot crashes under numpy {numpy} (the issue's finding)",
           crashed.stderr[-2000:])

    run(python, "-m", "open_clip_elip.patches", "apply")
    after = run(python.parent / "open_clip_elip-patches", "status")  # the console script: the same command
    expect(after.stdout.count("applied: open_clip_torch-") == 3, "status after apply (console script): all applied",
           after.stdout)
    quiet = run(python, "-c", "import open_clip", cwd=work)
    expect("our fixes" not in quiet.stderr, "no warning once applied", quiet.stderr)

    preamble = ("import torch, open_clip\nimages = torch.randn(2, 3, 224, 224)\n"
                "captions = ['a photo of a cat', 'a photo of a dog']\n"
                "tokens = open_clip.get_tokenizer('ViT-B-16-elip')(captions)\n")
    snippet = run(python, "-c", preamble + readme_snippet() + "print(tuple(features.shape))\n", cwd=work)
    expect(snippet.stdout.strip().endswith("(2, 512)"), "the README's usage snippet runs", snippet.stdout)

    trainer(python, data, "patched", ok=True)
    run_dir = data / "logs" / "patched"
    results = [json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()]
    expect(any("imagenet-zeroshot-val-top1" in r and "clip_val_loss" in r for r in results),
           "the trainer wrote a zero-shot accuracy and a validation loss", results)
    steps = run(python, "-c", STEPS, run_dir / "checkpoints" / "epoch_1.pt").stdout.strip()
    expect(steps == "[2]", "the trainer took two optimizer steps", steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "open_clip_elip-install-check",
                        help="the scratch venv, made if missing and reused (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="folder for the built files and the data (default: a new one)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="open_clip_elip-install-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        python = make_venv(args.venv)
        dist = work / "dist"
        run(python, "-m", "build", "--outdir", dist, REPO)
        wheel, = dist.glob("open_clip_elip-*-py3-none-any.whl")
        sdist, = dist.glob("open_clip_elip-*.tar.gz")
        check_mode(python, work, "wheel", wheel)
        check_done_when(python, work)
        check_mode(python, work, "sdist", sdist)
        check_mode(python, work, "editable", REPO)
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"install check passed (venv {args.venv}, files in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
