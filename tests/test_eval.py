"""clip_benchmark evaluation: our wds export, its command line on CPU (patched), the recipes."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.datasets.builder import build_dataset
from conftest import DIGIT_NAMES, TINY_ELIP, digit_samples
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from open_clip_elip import ElipCLIP
from open_clip_elip.evaluate import clip_benchmark_eval, export_wds
from open_clip_elip.results import LINEAR_PROBE_ORDER, ZERO_SHOT_ORDER
from open_clip_elip.results import parse_args as parse_results_args

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of the digit {c}.", "the number {c}"]
TRAIN, TEST = 200, 100


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits as clip_benchmark's ``wds/digits``: 200 training and 100 test samples."""
    samples = list(digit_samples(TRAIN + TEST))
    root = tmp_path_factory.mktemp("wds_digits")
    for split, part in (("train", samples[:TRAIN]), ("test", samples[TRAIN:])):
        export_wds([s[0] for s in part], [s[2] for s in part], DIGIT_NAMES, TEMPLATES, root, split)
    return root, samples[TRAIN:]


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny models in the clip_benchmark subprocess: one torch thread (spinning threads cost more on a busy CPU)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def checkpoint(tiny_configs, tmp_path_factory):
    """A state dict of a freshly created tiny ELIP model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    torch.save(open_clip.create_model(TINY_ELIP).state_dict(), path)
    return path


def test_export_wds_is_read_by_clip_benchmark(tmp_path):
    samples = list(digit_samples(5))
    root = export_wds([s[0] for s in samples], [s[2] for s in samples], DIGIT_NAMES, TEMPLATES, tmp_path,
                      "val", max_count=2)
    assert sorted(p.name for p in (root / "val").glob("*.tar")) == ["0.tar", "1.tar", "2.tar"]
    dataset = build_dataset("wds/digits", root=str(root), split="val", transform=None)
    assert dataset.classes == DIGIT_NAMES and dataset.templates == TEMPLATES
    read = list(dataset)
    assert [label for _, label in read] == [s[2] for s in samples]
    assert all(image.tobytes() == s[0].tobytes() for (image, _), s in zip(read, samples))  # lossless


def test_export_wds_rejects_bad_input(tmp_path):
    image = next(digit_samples(1))[0]
    with pytest.raises(ValueError, match="{c}"):
        export_wds([image], [0], DIGIT_NAMES, ["a photo of a digit"], tmp_path)
    with pytest.raises(ValueError, match="label 10"):
        export_wds([image], [10], DIGIT_NAMES, TEMPLATES, tmp_path)


def test_zero_shot_command_line_matches_in_process(digits, checkpoint, tmp_path, one_thread):
    root, test_samples = digits
    classifier_file = tmp_path / "classifier.pt"
    result = clip_benchmark_eval(TINY_ELIP, checkpoint, "wds/digits", "zeroshot_classification", root,
                                 tmp_path / "results", extra_args=["--save_clf", str(classifier_file)])
    dump = json.loads(result.read_text())
    assert (dump["model"], dump["dataset"], dump["task"]) == (TINY_ELIP, "wds/digits", "zeroshot_classification")

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ELIP, pretrained=str(checkpoint))
    model.eval()
    assert isinstance(model, ElipCLIP)
    templates = [lambda c, t=t: t.format(c=c) for t in TEMPLATES]
    classifier = build_zero_shot_classifier(model, open_clip.get_tokenizer(TINY_ELIP), DIGIT_NAMES, templates)
    assert torch.allclose(torch.load(classifier_file), classifier, atol=1e-5)
    with torch.no_grad():
        images = torch.stack([preprocess(image) for image, _, _ in test_samples])
        logits = F.normalize(model.encode_image(images), dim=-1) @ classifier
    labels = torch.tensor([label for _, _, label in test_samples])
    top5 = logits.topk(5, dim=1).indices
    assert dump["metrics"]["acc1"] == pytest.approx((top5[:, 0] == labels).float().mean().item())
    assert dump["metrics"]["acc5"] == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())


def test_linear_probe_runs_on_cpu(digits, checkpoint, tmp_path, one_thread):
    root, _ = digits
    result = clip_benchmark_eval(TINY_ELIP, checkpoint, "wds/digits", "linear_probe", root, tmp_path,
                                 batch_size=32, extra_args=["--fewshot_epochs", "100", "--fewshot_lr", "5"])
    assert result.parent == tmp_path and result.name.endswith("_linear_probe.json")
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["lp_acc1"] > 0.2  # 10 classes: chance is 0.1, 3 standard deviations at 100 samples


def test_clip_benchmark_eval_rejects_device():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        clip_benchmark_eval(TINY_ELIP, "x.pt", "wds/digits", "linear_probe", "root", "out", device="cuda:1")


def test_recipe_commands_parse(monkeypatch, tmp_path):
    from clip_benchmark.cli import get_parser_args

    out = tmp_path / "results"
    command = [str(REPO / "recipes/eval/compare.sh"), "ViT-B-16", "stock.pt", "ViT-B-16-elip", "elip.pt", str(out)]
    lines = subprocess.run(command, env=dict(os.environ, DRY_RUN="1"), capture_output=True, text=True,
                           check=True).stdout.splitlines()
    *evals, table = map(shlex.split, lines)
    runs = set()
    for argv in evals:
        assert argv[1:4] == ["-m", "clip_benchmark.cli", "eval"]  # clip_benchmark of the recipes' python
        monkeypatch.setattr(sys, "argv", ["clip_benchmark", *argv[3:]])
        _, args = get_parser_args()
        assert Path(args.output).parent == out / {"stock.pt": "stock", "elip.pt": "elip"}[args.pretrained[0]]
        runs.add((args.model[0], args.task, args.dataset[0].removeprefix("wds/")))
    expected = {("zeroshot_classification", d) for d in ZERO_SHOT_ORDER} | {
        ("linear_probe", d) for d in LINEAR_PROBE_ORDER}
    assert len(evals) == len(runs) == 2 * len(expected)
    assert runs == {(model, *run) for model in ("ViT-B-16", "ViT-B-16-elip") for run in expected}
    assert table[1:3] == ["-m", "open_clip_elip.results"]
    args = parse_results_args(table[3:])
    assert args.paths == [str(out / "stock"), str(out / "elip")] and args.baseline == "ViT-B-16" and args.paper
