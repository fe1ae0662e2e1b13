"""OpenCLIP integration: the start-up hook, both install modes, and open_clip's factory functions."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import TINY_ELIP, TINY_STOCK, digit_samples
from open_clip import (
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_tokenizer,
    list_models,
)

from open_clip_elip import ElipCLIP

REPO = Path(__file__).resolve().parents[1]
ELIP_NAMES = {"ViT-S-16-elip", "ViT-B-16-elip", "ViT-B-32-elip", "ViT-L-14-elip"}


def copy_source(target: Path) -> None:
    """The files git would commit here (tracked, or new and not ignored), tests and study records left out: never
    a venv, a build or a run folder that happens to lie in the checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if name.startswith(("tests/", "docs/study/")) or not (REPO / name).is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)


def python(code, executable=sys.executable, pythonpath=None, **variables):
    """Run ``code`` in a fresh interpreter (our environment, ``PYTHONPATH`` replaced, ``variables`` added); returns
    the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")} | variables
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(executable), "-c", code], capture_output=True, text=True, env=env, timeout=300)


def json_out(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the start-up hook ------------------------------------------------------------------------------------

def test_import_open_clip_alone_registers_the_elip_models(tiny_configs):
    result = python(
        "import json, sys, open_clip\n"
        "model = open_clip.create_model('ViT-Tiny-4-elip')\n"
        "print(json.dumps({'names': open_clip.list_models(), 'elip': type(model).__name__,\n"
        "                  'visual': type(model.visual).__name__,\n"
        "                  'stock': type(open_clip.create_model('ViT-Tiny-4')).__name__}))")
    out = json_out(result)
    assert ELIP_NAMES | {TINY_ELIP} <= set(out["names"])
    assert (out["elip"], out["visual"], out["stock"]) == ("ElipCLIP", "ElipVisionTransformer", "CLIP")


def test_start_up_hook_imports_nothing_until_open_clip_is():
    out = json_out(python(
        "import json, sys\n"
        "print(json.dumps({'heavy': sorted({'torch', 'open_clip', 'open_clip_elip'} & set(sys.modules)),\n"
        "                  'hook': any(type(f).__name__ == 'OpenClipImportHook' for f in sys.meta_path)}))"))
    assert out == {"heavy": [], "hook": True}  # the hook is in place, and it imported nothing


def test_a_failing_hook_warns_once_and_open_clip_still_imports(tiny_configs, tmp_path):
    broken = tmp_path / "open_clip_elip"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated registration failure')\n")
    result = python(
        "import json, open_clip\n"
        "print(json.dumps({'elip': [m for m in open_clip.list_models() if m.endswith('-elip')],\n"
        "                  'stock': 'ViT-B-16' in open_clip.list_models()}))",
        pythonpath=tmp_path)
    assert json_out(result) == {"elip": [], "stock": True}
    warnings = [line for line in result.stderr.splitlines() if "Warning" in line and "open_clip_elip" in line]
    assert len(warnings) == 1, result.stderr
    assert result.stderr.count("simulated registration failure") == 1 and "simulated" in warnings[0]


def test_a_find_spec_probe_before_the_import_does_not_disarm_the_hook():
    """Libraries check ``find_spec("open_clip")`` before importing it: the later import must still register."""
    out = json_out(python(
        "import importlib.util, json, sys\n"
        "probes = [importlib.util.find_spec('open_clip') is not None for _ in range(2)]\n"
        "import open_clip\n"
        "print(json.dumps({'probes': probes, 'elip': 'ViT-B-16-elip' in open_clip.list_models(),\n"
        "                  'hooks': [type(f).__name__ for f in sys.meta_path if 'OpenClip' in type(f).__name__]}))",
        pythonpath=REPO / "src"))
    assert out == {"probes": [True, True], "elip": True, "hooks": []}  # registered, and the hook is gone


@pytest.mark.parametrize("value, registered", [("1", False), ("0", True)])
def test_the_environment_variable_turns_the_hook_off(value, registered):
    out = json_out(python(
        "import json, sys, open_clip\n"
        "before = ['ViT-B-16-elip' in open_clip.list_models(), 'open_clip_elip' in sys.modules]\n"
        "import open_clip_elip\n"  # an explicit import still registers
        "print(json.dumps({'before': before, 'after': 'ViT-B-16-elip' in open_clip.list_models()}))",
        pythonpath=REPO / "src", OPEN_CLIP_ELIP_DISABLE=value))
    assert out == {"before": [registered, registered], "after": True}


def test_the_hook_never_raises_even_with_warnings_as_errors(tmp_path):
    broken = tmp_path / "open_clip_elip"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated registration failure')\n")
    result = python("import json, open_clip\nprint(json.dumps('ViT-B-16' in open_clip.list_models()))",
                    pythonpath=os.pathsep.join([str(tmp_path), str(REPO / "src")]),
                    PYTHONWARNINGS="error::RuntimeWarning")
    assert json_out(result) is True
    assert result.stderr.count("simulated registration failure") == 1, result.stderr


# --- install modes: each in a throwaway venv that sees .venv's packages but not its .pth files -------------

@pytest.mark.parametrize("mode", ["wheel", "sdist", "editable"])
def test_install_carries_the_start_up_hook_and_the_fixes(tmp_path, mode):
    """``pip install`` of the tree (a wheel built from it), of an sdist (as ``python -m build`` makes it) and ``-e``;
    ``make install-check`` does the same with the registry's packages in a venv of its own."""
    source = tmp_path / "source"
    copy_source(source)  # builds write into the source tree: not into ours
    target = source
    if mode == "sdist":
        built = subprocess.run([sys.executable, "-c", "from setuptools import build_meta\n"
                                "print(build_meta.build_sdist('dist'))"], cwd=source, capture_output=True, text=True)
        assert built.returncode == 0, built.stderr[-3000:]
        target = source / "dist" / built.stdout.strip().splitlines()[-1]
        shutil.rmtree(source / "src")  # the sdist must hold all it needs
        shutil.rmtree(source / "patches")
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_python = venv / "bin" / "python"
    site = Path(python("import sysconfig; print(sysconfig.get_path('purelib'))", venv_python).stdout.strip())
    (site / "_outer_site_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")  # a path, no hooks
    probe = ("import importlib.util, json\n"
             "print(json.dumps(importlib.util.find_spec('open_clip_elip') is not None))")
    assert json_out(python(probe, venv_python)) is False  # nothing of ours is visible before the install

    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--no-deps",
                    "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q",
                    *(["-e"] if mode == "editable" else []), str(target)], check=True, capture_output=True)

    assert (site / "open_clip_elip.pth").is_file()
    out = json_out(python(
        "import json, sys, open_clip\n"
        "print(json.dumps({'names': open_clip.list_models(), 'file': sys.modules['open_clip_elip'].__file__}))",
        venv_python))
    assert ELIP_NAMES <= set(out["names"])
    assert Path(out["file"]).is_relative_to(source / "src" if mode == "editable" else site)
    patches = sorted(p.name for p in (REPO / "patches").glob("*.patch"))
    shipped = site / "open_clip_elip" / "_patches"
    assert sorted(p.name for p in shipped.glob("*")) == ([] if mode == "editable" else patches)
    status = subprocess.run([str(venv_python), "-m", "open_clip_elip.patches", "status"], capture_output=True,
                            text=True)  # the outer environment's packages, patched by `make install`
    assert status.returncode == 0, status.stderr
    assert [line.split(" (")[0] for line in status.stdout.splitlines()] == [f"applied: {p}" for p in patches]


# --- open_clip's factory functions ------------------------------------------------------------------------

def test_create_model_with_precisions(tiny_configs):
    text = get_tokenizer(TINY_ELIP)(["a photo of the digit one", "a photo of the digit two"])
    assert tuple(text.shape) == (2, 16)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = create_model(TINY_ELIP, precision=precision)
        assert type(model) is ElipCLIP and model.visual.conv1.weight.dtype == dtype
        image_features, text_features, _ = model(torch.randn(2, 3, 32, 32, dtype=dtype), text)
        assert image_features.dtype == dtype and torch.isfinite(image_features.float()).all()
        assert text_features.shape == image_features.shape == (2, 32)


def test_create_model_and_transforms(tiny_configs):
    model, _, preprocess = create_model_and_transforms(TINY_ELIP)
    image, caption, _ = next(digit_samples(1, size=48))
    pixels = preprocess(image).unsqueeze(0)
    assert type(model) is ElipCLIP and pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        features, _, _ = model(pixels, get_tokenizer(TINY_ELIP)([caption]))
    assert features.shape == (1, 32)


def test_create_model_from_a_local_state_dict(tiny_configs, tmp_path):
    torch.manual_seed(0)
    saved = create_model(TINY_ELIP)
    path = tmp_path / "tiny.pt"
    torch.save(saved.state_dict(), path)
    model, preprocess = create_model_from_pretrained(TINY_ELIP, pretrained=str(path))
    assert type(model) is ElipCLIP and callable(preprocess)
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_output_dict_has_the_stock_keys(tiny_configs):
    elip, stock = create_model(TINY_ELIP, output_dict=True), create_model(TINY_STOCK, output_dict=True)
    image, text = torch.randn(2, 3, 32, 32), get_tokenizer(TINY_ELIP)(["a", "b"])
    assert elip(image, text).keys() == stock(image, text).keys()


def test_force_image_size_changes_the_token_counts(tiny_configs):
    visual = create_model(TINY_ELIP, force_image_size=64).visual
    assert visual.tokens_per_block() == (257, 233, 169, 104)  # 1 + int(257 x r) + 1 merged
    with torch.no_grad():
        _, trace = visual.trace(torch.randn(2, 3, 64, 64), torch.nn.functional.normalize(torch.randn(2, 32), dim=-1))
    assert [t.keep_index.shape[1] for t in trace] == [231, 167, 102]


def test_per_call_options_override_only_what_they_name(tiny_configs):
    cfg = create_model(TINY_ELIP, elip_cfg={"lam": 0.5}).visual.elip_cfg
    assert cfg.lam == 0.5
    assert (cfg.layout, cfg.keep_ratios, cfg.scoring, cfg.merge) == ((1, 1, 1, 1), (0.9, 0.65, 0.4), "lookahead", True)


def test_per_call_options_are_validated(tiny_configs):
    with pytest.raises(ValueError, match="keep_ratios"):
        create_model(TINY_ELIP, elip_cfg={"keep_ratios": [1.2, 0.5, 0.4]})


def test_unknown_model_name_is_named(tiny_configs):
    with pytest.raises(RuntimeError, match="'ViT-Nope-elip'"):
        create_model("ViT-Nope-elip")
    assert ELIP_NAMES | {TINY_ELIP} <= set(list_models())
