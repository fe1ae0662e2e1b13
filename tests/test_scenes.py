"""The scenes regime: canvases under half covered, captions naming the target alone, single-item evaluation
canvases, OpenCLIP's loader reading the shards, seeded reproducibility and errors that say what to do."""
import argparse
import gzip
import hashlib
import re
import tarfile

import numpy as np
import open_clip
import pytest
import webdataset as wds
from open_clip_train.data import get_wds_dataset
from PIL import Image
from sklearn.datasets import load_digits

from open_clip_elip import scenes
from open_clip_elip.fashion_mnist import CLASSNAMES, TEMPLATES

TRAIN, TEST = 300, 100  # items of the idx folder's splits


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """An MNIST-format folder of scikit-learn's digits upscaled to 28 px: 300 train and 100 test items."""
    digits = load_digits()
    images = np.stack([np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                       for d in digits.images[:TRAIN + TEST]])
    labels = digits.target[:TRAIN + TEST]
    folder = tmp_path_factory.mktemp("idx")
    for prefix, chosen in (("train", slice(0, TRAIN)), ("t10k", slice(TRAIN, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[chosen])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[chosen])
    return folder, images, labels


def named_classes(caption):
    """Class names in ``caption`` as whole names ("shirt" is not named by "a t-shirt")."""
    return [c for c, name in enumerate(CLASSNAMES) if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", caption)]


def box_masks(boxes, canvas):
    """canvases x items x canvas x canvas booleans: the pixels of each box."""
    rows = np.arange(canvas)
    inside_y = (rows >= boxes[..., 1, None]) & (rows < boxes[..., 3, None])
    inside_x = (rows >= boxes[..., 0, None]) & (rows < boxes[..., 2, None])
    return inside_y[..., :, None] & inside_x[..., None, :]


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.7, 1.1)])
def test_canvases_hold_target_and_distractor_under_half_covered(items, scale):
    _, images, labels = items
    canvases, targets, meta = scenes.make_canvases(images[:TRAIN], labels[:TRAIN], 500, np.random.default_rng(0),
                                                   scale=scale)
    assert canvases.shape == (500, 64, 64) and canvases.dtype == np.uint8
    masks = box_masks(meta["boxes"], 64)
    union = masks.any(1)
    assert (union.mean((1, 2)) < 0.5).all()
    np.testing.assert_allclose(union.mean((1, 2)), meta["coverage"])
    assert (masks.sum(1) <= 1).all(), "boxes overlap"
    assert not canvases[~union].any(), "pixels outside the items' boxes"
    assert (targets == meta["labels"][:, 0]).all() and (meta["labels"][:, 1] != targets).all()
    assert (labels[meta["items"]] == meta["labels"]).all()
    assert sorted(meta["items"][:300, 0]) == list(range(TRAIN)), "every item is a target once per pass"
    for canvas, index, box in zip(canvases, meta["items"], meta["boxes"]):
        for item, (left, top, right, bottom) in zip(index, box):
            assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
            crop = canvas[top:bottom, left:right]
            if scale == (1.0, 1.0):
                assert (crop == images[item]).all()
            else:
                expected = np.asarray(Image.fromarray(images[item]).resize(crop.shape[::-1], Image.BILINEAR))
                assert (crop == expected).all()
    single, single_targets, single_meta = scenes.make_canvases(images[:TEST], labels[:TEST], TEST,
                                                               np.random.default_rng(1), items=1)
    assert single_meta["items"].shape == (TEST, 1) and sorted(single_meta["items"][:, 0]) == list(range(TEST))
    assert (single_meta["coverage"] == 28 * 28 / 64**2).all()


def open_clip_samples(pattern):
    """(image tensors, token tensors) through open_clip_train's get_wds_dataset (every sample once)."""
    args = argparse.Namespace(val_data=pattern, val_num_samples=None, batch_size=16, workers=0, world_size=1,
                              dataset_resampled=False, train_data_upsampling_factors=None, seed=0)
    data = get_wds_dataset(args, open_clip.image_transform(64, is_train=False), is_train=False,
                           tokenizer=open_clip.tokenize)
    batches = list(data.dataloader)
    return [i for images, _ in batches for i in images], [t for _, texts in batches for t in texts]


def test_shards_caption_the_target_alone_and_open_clip_reads_them(items, tmp_path):
    root, images, labels = items
    folder = scenes.write_scene_shards(tmp_path / "train", "train", 40, seed=0, root=root, skip_last=50, shard_size=16)
    pattern = f"{folder}/train-{{000000..000002}}.tar"
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("l8"))
    assert len(samples) == 40
    templates = set()
    for sample in samples:
        meta, caption = sample["json"], sample["txt"]
        target, distractor = meta["labels"]
        assert meta["label"] == target == labels[meta["items"][0]] and distractor != target
        assert named_classes(caption) == [target]
        templates.add(caption.replace(CLASSNAMES[target], "{c}"))
        assert max(meta["items"]) < TRAIN - 50, "an item kept for the linear probe"
        assert meta["coverage"] < 0.5
        left, top, right, bottom = meta["boxes"][0]
        crop = sample["jpg"][top:bottom, left:right].astype(int)
        assert np.abs(crop - images[meta["items"][0]]).mean() < 4  # the target's pixels, through JPEG
    assert templates <= set(TEMPLATES) and len(templates) > 1
    tensors, tokens = open_clip_samples(pattern)
    assert len(tensors) == 40 and tensors[0].shape == (3, 64, 64)
    assert tokens[0].tolist() == open_clip.tokenize(samples[0]["txt"])[0].tolist()


def test_eval_set_has_one_item_per_canvas(items, tmp_path):
    root, images, labels = items
    folder = scenes.write_scene_eval_set(tmp_path / "eval", 30, 20, seed=0, root=root)
    assert (folder / "classnames.txt").read_text().split("\n")[:-1] == CLASSNAMES
    assert (folder / "zeroshot_classification_templates.txt").read_text().split("\n")[:-1] == TEMPLATES
    for split, chosen in (("test", slice(TRAIN, TRAIN + 30)), ("train", slice(TRAIN - 20, TRAIN))):
        assert (folder / split / "nshards.txt").read_text() == "1\n"
        samples = list(wds.WebDataset(str(folder / split / "0.tar"), shardshuffle=False).decode("l8"))
        assert sorted(s["cls"] for s in samples) == sorted(labels[chosen])
        sums = {(int(y), int(i.astype(int).sum())) for i, y in zip(images[chosen], labels[chosen])}
        for sample in samples:
            canvas = sample["png"]
            assert canvas.shape == (64, 64)
            rows, cols = np.flatnonzero(canvas.any(1)), np.flatnonzero(canvas.any(0))
            assert rows[-1] - rows[0] < 28 and cols[-1] - cols[0] < 28, "more than one item"
            assert (sample["cls"], int(canvas.astype(int).sum())) in sums, "not one whole item of its class"


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def tar_contents(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_same_seed_same_bytes_other_seed_other_data(items, tmp_path):
    root = items[0]
    written = {name: scenes.write_scene_shards(tmp_path / name, "train", 30, seed, root, shard_size=16)
               for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    assert digests(written["a"]) == digests(written["b"])
    assert digests(written["a"]) != digests(written["c"])
    evals = {name: scenes.write_scene_eval_set(tmp_path / f"eval-{name}", 10, 10, seed, root)
             for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    for split in ("test", "train"):  # export_wds stamps its tar entries with the time: compare their contents
        contents = {name: tar_contents(folder / split / "0.tar") for name, folder in evals.items()}
        assert contents["a"] == contents["b"] != contents["c"]


def test_cli_writes_everything_and_a_legible_preview(items, tmp_path, capsys):
    root = items[0]
    out, preview = tmp_path / "scenes", tmp_path / "preview.png"
    scenes.main(["--out", str(out), "--train", "24", "--test", "10", "--probe", "10", "--heldout", "8",
                 "--seed", "1", "--fashion-mnist", str(root), "--preview", str(preview)])
    printed = capsys.readouterr().out
    assert f"wrote 24 training canvases to {out / 'train'}" in printed
    assert printed.splitlines()[-1] == (
        f"study options: --train-data '{out}/train/train-{{000000..000000}}.tar' --train-num-samples 24 "
        f"--eval-dataset wds/fashion_mnist_scenes --eval-root {out / 'eval'} "
        f"--heldout-data '{out}/heldout/train-{{000000..000000}}.tar'")
    assert Image.open(preview).size[0] == 4 * (64 * 3 + 12)
    with pytest.raises(SystemExit) as exit_info:
        scenes.main(["--help"])
    assert exit_info.value.code == 0 and "--preview PNG" in capsys.readouterr().out


def test_errors_name_the_problem_and_the_fix(items, tmp_path, monkeypatch, capsys):
    root, images, labels = items
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="canvas of 20 px is too small for items of up to 28x28 px: use a canvas "
                                         "of at least 28 px or a smaller scale"):
        scenes.make_canvases(images, labels, 4, rng, canvas=20)
    with pytest.raises(ValueError, match="3 items of up to 28x28 px could cover 57% of a 64 px canvas, not under "
                                         "50%: use a canvas of at least 69 px, fewer items or a smaller scale"):
        scenes.make_canvases(images, labels, 4, rng, items=3)
    scenes.make_canvases(images, labels, 4, rng, canvas=69, items=3)
    with pytest.raises(ValueError, match="scale range 0 < low <= high"):
        scenes.make_canvases(images, labels, 4, rng, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="a second class"):
        scenes.make_canvases(images[labels == 1], labels[labels == 1], 4, rng)
    monkeypatch.setattr(scenes, "MAX_ROUNDS", 1)
    with pytest.raises(ValueError, match="found no place for 2 items without overlap in 1 tries: use a larger "
                                         "canvas"):
        scenes.make_canvases(images, labels, 50, rng)
    monkeypatch.undo()

    with pytest.raises(FileNotFoundError, match=r"no Fashion-MNIST train files .* give a folder holding "
                                                r"MNIST-format \(idx\) files"):
        scenes.write_scene_shards(tmp_path / "shards", "train", 4, 0, root=tmp_path)
    with pytest.raises(ValueError, match="the train split has 300 items: cannot keep its last 300 out of the training "
                                         "canvases for the linear probe; ask for fewer probe canvases"):
        scenes.write_scene_shards(tmp_path / "shards", "train", 4, 0, root=root, skip_last=TRAIN)
    scenes.write_scene_shards(tmp_path / "shards", "train", 4, 0, root=root)
    with pytest.raises(FileExistsError, match="remove it to rebuild them"):
        scenes.write_scene_shards(tmp_path / "shards", "train", 4, 0, root=root)
    with pytest.raises(ValueError, match="200 test canvases asked for; the test split has 100 items"):
        scenes.write_scene_eval_set(tmp_path / "eval", 200, 10, 0, root=root)

    def error(argv):
        with pytest.raises(SystemExit) as exit_info:
            scenes.main(["--out", str(tmp_path / "cli"), *argv])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "--fashion-mnist: no folder" in error(["--fashion-mnist", str(tmp_path / "nope")])
    assert "--probe must be at least 1" in error(["--probe", "0"])
    assert "use a canvas of at least 28 px" in error(["--fashion-mnist", str(root), "--probe", "10", "--canvas", "24"])
    assert "ask for fewer probe canvases" in error(["--fashion-mnist", str(root)])


def test_smaller_distractors_and_fewer_classes_keep_the_premise(items, tmp_path):
    root, images, labels = items
    canvases, targets, meta = scenes.make_canvases(images, labels, 64, np.random.default_rng(0), canvas=48,
                                                   scale=(1.0, 1.0), distractor_scale=(0.5, 0.5))
    sides = meta["boxes"][..., 2:] - meta["boxes"][..., :2]
    assert (sides[:, 0] == 28).all() and (sides[:, 1] == 14).all()  # the target at full size, the distractor half
    assert (meta["coverage"] < 0.5).all() and (meta["labels"][:, 0] != meta["labels"][:, 1]).all()
    with pytest.raises(ValueError, match="could cover 68% of a 48 px canvas"):  # two full-size items would not fit
        scenes.make_canvases(images, labels, 4, np.random.default_rng(0), canvas=48)
    # the default draws the same canvases as before the option existed
    same = scenes.make_canvases(images, labels, 8, np.random.default_rng(1))
    assert np.array_equal(same[0], scenes.make_canvases(images, labels, 8, np.random.default_rng(1),
                                                        distractor_scale=None)[0])
    shards = scenes.write_scene_shards(tmp_path / "shards", "train", 40, 0, root=root, classes=3, canvas=48,
                                       distractor_scale=(0.5, 0.5))
    records = [s["json"] for s in wds.WebDataset(str(shards / "train-000000.tar"), shardshuffle=False).decode()]
    assert len(records) == 40 and {label for r in records for label in r["labels"]} <= {0, 1, 2}
    evaluation = scenes.write_scene_eval_set(tmp_path / "eval", 60, 30, 0, root=root, classes=3)
    assert (evaluation / "classnames.txt").read_text().split() == ["t-shirt", "trouser", "pullover"]
    with pytest.raises(ValueError, match="--classes 1: need at least 2"):
        scenes.write_scene_shards(tmp_path / "one", "train", 4, 0, root=root, classes=1)
