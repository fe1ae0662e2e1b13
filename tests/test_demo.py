"""The offline demo on the real Fashion-MNIST files: data, a tiny end-to-end run (trainer + clip_benchmark),
reuse of built data and no overwriting of earlier runs."""
import json
import math

import numpy as np
import pytest
import webdataset as wds

from open_clip_elip import demo, fashion_mnist

# the Debian package's files, named: a test never downloads
TINY_RUN = ["--fashion-mnist", str(fashion_mnist.DEBIAN_DIR), "--samples", "128", "--batch-size", "64", "--epochs", "1",
            "--test-samples", "100", "--probe-samples", "100", "--threads", "1", "--log-every", "1"]


def test_fashion_mnist_splits_load_from_the_debian_files():
    images, labels = fashion_mnist.load_split("test", fashion_mnist.DEBIAN_DIR)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10


def test_missing_files_and_failed_download_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no Fashion-MNIST train files"):
        fashion_mnist.find_idx_files("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        fashion_mnist.find_idx_files("val")

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.download(tmp_path)


def test_train_shards_in_openclip_format(tmp_path):
    images, labels = fashion_mnist.load_split("test", fashion_mnist.DEBIAN_DIR)
    folder = fashion_mnist.write_train_shards(images[:20], labels[:20], tmp_path / "shards", shard_size=8)
    assert json.loads((folder / "sizes.json").read_text()) == {
        "train-000000.tar": 8, "train-000001.tar": 8, "train-000002.tar": 4}
    assert fashion_mnist.shard_pattern(folder) == str(folder / "train-{000000..000002}.tar")
    samples = list(wds.WebDataset(fashion_mnist.shard_pattern(folder), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(20)]
    for sample, image, label in zip(samples, images, labels):
        assert sample["jpg"].size == (28, 28)
        assert np.abs(np.asarray(sample["jpg"].convert("L"), dtype=int) - image).mean() < 8  # JPEG, quality 95
        assert fashion_mnist.CLASSNAMES[label] in sample["txt"]
    assert len({s["txt"].replace(fashion_mnist.CLASSNAMES[y], "{c}") for s, y in zip(samples, labels)}) > 1
    with pytest.raises(FileExistsError, match="exists already"):
        fashion_mnist.write_train_shards(images[:4], labels[:4], folder)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(demo.parse_args(["--out", str(out), *TINY_RUN]))


def test_demo_trains_and_evaluates_both_models(first_run):
    out, run = first_run
    record = json.loads((run / "results.json").read_text())
    stock, elip = "ViT-FMNIST-32px", "ViT-FMNIST-32px-elip"
    assert list(record["models"]) == [stock, elip]
    for name in (stock, elip):
        model = record["models"][name]
        for column in ("fashion_mnist acc1", "fashion_mnist acc5", "fashion_mnist lp_acc1"):
            assert math.isfinite(model[column]) and 0 <= model[column] <= 100, (name, column)
        assert model["train_seconds_per_step"] > 0 and model["steps"] == 2
        assert (run / "train" / name / "checkpoints" / "epoch_1.pt").exists()
    assert record["models"][stock]["tokens_per_block"] == [65] * 4
    assert record["models"][elip]["tokens_per_block"] == [65, 60, 44, 28]
    assert record["models"][elip][demo.TOKEN_LAYERS] < 1
    markdown = (run / "results.md").read_text()
    assert f"| {elip} |" in markdown and f"| {stock} |" in markdown and "65/60/44/28" in markdown


def test_second_run_reuses_data_and_keeps_the_first(first_run, capsys):
    out, run = first_run
    data = sorted(p for p in (out / "data").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in [*data, *run.rglob("*.json"), run / "results.md"]}
    second = demo.run_demo(demo.parse_args(["--out", str(out), *TINY_RUN, "--skip-eval"]))
    printed = capsys.readouterr().out
    assert "reusing training shards" in printed
    assert second.name == "run-002" and run.name == "run-001"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p for p in (out / "data").rglob("*") if p.is_file()) == data
    assert set(json.loads((second / "results.json").read_text())["models"]) == set(
        json.loads((run / "results.json").read_text())["models"])
    assert demo.eval_set(out, 100, 100, fashion_mnist.DEBIAN_DIR) == out / "data" / "fashion-mnist-wds-test100-probe100"
    assert "reusing evaluation set" in capsys.readouterr().out
