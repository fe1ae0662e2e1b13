"""Evaluation through clip_benchmark: write a labelled image set as a clip_benchmark ``wds/``
dataset, and run ``clip_benchmark eval`` on a checkpoint as its command line does.

The evaluation runs in a subprocess, so the ``-elip`` models (and any configs named in
``OPEN_CLIP_ELIP_CONFIGS``) reach clip_benchmark through the package's start-up hook alone,
exactly as in ``clip_benchmark eval --model ViT-B-16-elip ...``. It needs the patched
clip_benchmark 1.6.2 (``make patch-deps``: linear probe on CPU, numpy 2 accuracy).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import webdataset as wds

DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"  # clip_benchmark's own default


def export_wds(images: Iterable, labels: Iterable[int], classnames: Sequence[str], templates: Sequence[str],
               root, split: str = "test", image_format: str = "png", max_count: int = 10_000) -> Path:
    """Write ``(image, label)`` pairs as clip_benchmark's ``wds/<name>`` dataset at ``root``; returns ``root``.

    Layout (what ``--dataset wds/<name> --dataset_root <root> --split <split>`` reads):
    ``<root>/<split>/{0..n-1}.tar`` (samples with ``<image_format>`` and ``cls`` keys),
    ``<root>/<split>/nshards.txt``, ``<root>/classnames.txt`` and
    ``<root>/zeroshot_classification_templates.txt`` (one ``{c}`` template a line).
    ``images`` are PIL images (PNG keeps them lossless); ``labels`` index ``classnames``.
    """
    if not templates or not all("{c}" in template for template in templates):
        raise ValueError(f"templates need a '{{c}}' where the class name goes, e.g. 'a photo of a {{c}}.'; "
                         f"got {list(templates)}")
    if any("\n" in text for text in [*classnames, *templates]):
        raise ValueError("class names and templates are written one a line: remove their newlines")
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    (root / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in templates))
    with wds.ShardWriter(str(root / split / "%d.tar"), maxcount=max_count, verbose=0) as sink:
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            if not 0 <= int(label) < len(classnames):
                raise ValueError(f"label {label} of sample {index} is not an index into the {len(classnames)} "
                                 "class names")
            sink.write({"__key__": f"s{index:07d}", image_format: image, "cls": int(label)})
        shards = sink.shard
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return root


def output_path(output, model: str, pretrained: str, dataset: str, task: str, language: str = "en") -> Path:
    """The file ``clip_benchmark eval --output OUTPUT`` writes (a folder gets its default file name)."""
    output = str(output)
    if os.path.isdir(output) or not output.endswith(".json"):
        output = os.path.join(output, DEFAULT_OUTPUT)
    dataset_slug = dataset.removeprefix("wds/").replace("/", "_")
    pretrained_is_file = os.path.isfile(pretrained)
    return Path(output.format(
        model=model, task=task, dataset=dataset_slug, language=language,
        pretrained=os.path.basename(pretrained) if pretrained_is_file else pretrained,
        pretrained_full_path=pretrained.replace("/", "_") if pretrained_is_file else pretrained))


def clip_benchmark_eval(model: str, pretrained, dataset: str, task: str, dataset_root, output,
                        batch_size: int = 64, device: str = "cpu", num_workers: int = 0,
                        amp: bool | None = None, extra_args: Sequence[str] = ()) -> Path:
    """Run ``clip_benchmark eval`` in a subprocess; returns the path of the JSON file it wrote.

    ``output`` is a file name, a clip_benchmark ``--output`` template (``{dataset}``, ``{model}``,
    ``{pretrained}``, ``{task}``, ``{language}``) or a folder (clip_benchmark's default name in it).
    ``device`` "cpu" hides the GPUs from clip_benchmark (it takes CUDA whenever it sees one);
    ``amp`` defaults to on for CUDA and off on CPU (bfloat16 autocast there is slow and lossy).
    Linear-probe features go to a temporary folder unless ``extra_args`` names a ``--feature_root``
    (clip_benchmark reuses cached features by model and checkpoint name, even for a new checkpoint).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (clip_benchmark picks the GPU itself), not {device!r}")
    pretrained = str(pretrained)
    amp = device == "cuda" if amp is None else amp
    path = output_path(output, model, pretrained, dataset, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}))
    with tempfile.TemporaryDirectory(prefix="clip_benchmark_features_") as features:
        command = [
            sys.executable, "-m", "clip_benchmark.cli", "eval", "--model", model, "--pretrained", pretrained,
            "--dataset", dataset, "--dataset_root", str(dataset_root), "--task", task,
            "--batch_size", str(batch_size), "--num_workers", str(num_workers), "--output", str(path),
            "--feature_root", features, *([] if amp else ["--no_amp"]),
            *extra_args]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"clip_benchmark eval failed (exit status {result.returncode}, no {path} written): "
                           f"{shlex.join(command)}\n{(result.stdout + result.stderr)[-3000:]}")
    return path
