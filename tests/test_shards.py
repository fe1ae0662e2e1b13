"""Annotation files -> webdataset shards -> manifest, read back with OpenCLIP's own loader."""
import argparse
import json
import os
import subprocess
import sys
import tarfile
import types
from collections import Counter
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import webdataset as wds
from open_clip_train.data import expand_urls, get_dataset_size, get_wds_dataset
from PIL import Image

from open_clip_elip import shards

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "data"


def save_image(path, size=(40, 30), color=(200, 30, 30), format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=format)
    return path


def open_clip_samples(train_data, batch_size=4):
    """(images, captions) through open_clip_train's get_wds_dataset (eval pipeline: every sample once)."""
    args = argparse.Namespace(val_data=train_data, val_num_samples=None, batch_size=batch_size, workers=0,
                              world_size=1, dataset_resampled=False, train_data_upsampling_factors=None, seed=0)
    preprocess = open_clip.image_transform(32, is_train=False)
    data = get_wds_dataset(args, preprocess, is_train=False, tokenizer=open_clip.tokenize)
    batches = list(data.dataloader)
    images = [image for batch_images, _ in batches for image in batch_images]
    texts = [text for _, batch_texts in batches for text in batch_texts]
    return images, texts


def wds_samples(train_data):
    """Samples decoded and renamed as OpenCLIP's loader does, plus their json metadata."""
    dataset = wds.WebDataset(train_data, shardshuffle=False).decode("pil").rename(
        image="jpg;png;jpeg;webp", text="txt")
    return list(dataset)


@pytest.fixture
def coco(tmp_path):
    """A COCO-style folder: 3 good images (one large, one PNG), a corrupt jpg; captions json with bad rows."""
    images = tmp_path / "coco" / "train2017"
    save_image(images / "000001.jpg", (40, 30))
    save_image(images / "000002.jpg", (96, 64), (10, 200, 10))  # larger than --image-size 32: shrunk
    save_image(images / "000003.png", (30, 30), (10, 10, 200), format="PNG")  # re-encoded as jpg
    (images / "000004.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    annotations = {
        "images": [{"id": i, "file_name": name, "width": 1, "height": 1}
                   for i, name in enumerate(["000001.jpg", "000002.jpg", "000003.png", "000004.jpg", "000005.jpg"], 1)],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red  square\non a table. "},
            {"id": 11, "image_id": 1, "caption": "a red square"},
            {"id": 12, "image_id": 2, "caption": "a green rectangle"},
            {"id": 13, "image_id": 3, "caption": "a blue square"},
            {"id": 14, "image_id": 3, "caption": "   "},  # empty caption
            {"id": 15, "image_id": 4, "caption": "a corrupt image"},
            {"id": 16, "image_id": 5, "caption": "an image that is not in the folder"},
            {"id": 17, "image_id": 99, "caption": "an image id without an image record"},
        ],
    }
    captions = tmp_path / "coco" / "captions_train2017.json"
    captions.write_text(json.dumps(annotations))
    return captions, images


def test_cc3m_cc12m_tables_skip_and_count_bad_lines(tmp_path):
    rows = [("a \"quoted\"\u00a0 caption ", "http://x/1.jpg"), ("second  one", "http://x/2.jpg"),
            ("   ", "http://x/3.jpg"), ("no url", " ")]
    cc3m = [f"{caption}\t{url}".encode() for caption, url in rows]
    cc3m += [b"caf\xe9\thttp://x/latin1.jpg", b"no tab at all", b"one\ttab\ttoo many"]
    (tmp_path / "cc3m.tsv").write_bytes(b"\n".join(cc3m) + b"\n")
    (tmp_path / "cc12m.tsv").write_bytes(b"\n".join(b"\t".join(line.split(b"\t")[::-1]) for line in cc3m))

    table, skipped = shards.cc3m_table(tmp_path / "cc3m.tsv")
    expected = pd.DataFrame({"url": ["http://x/1.jpg", "http://x/2.jpg"],
                             "caption": ['a "quoted" caption', "second one"], "line": [1, 2]})
    pd.testing.assert_frame_equal(table, expected)
    assert skipped == Counter({"empty caption": 1, "missing url": 1, "non-UTF-8 line": 1,
                               "malformed line (not 2 tab-separated fields)": 2})
    table12, skipped12 = shards.cc12m_table(tmp_path / "cc12m.tsv")
    pd.testing.assert_frame_equal(table12, expected)
    assert skipped12 == skipped

    written = shards.write_table(table, tmp_path / "table.tsv")  # what img2dataset reads with input_format=tsv
    pd.testing.assert_frame_equal(pd.read_csv(written, sep="\t", keep_default_na=False), expected)
    with pytest.raises(ValueError, match=r"\.parquet or \.tsv"):
        shards.write_table(table, tmp_path / "table.csv")


def test_sbu_table_aligns_the_two_files(tmp_path):
    urls, captions = tmp_path / "urls.txt", tmp_path / "captions.txt"
    urls.write_bytes(b"http://s/1.jpg\nhttp://s/2.jpg\nhttp://s/3.jpg\nhttp://s/4.jpg\n")
    captions.write_bytes(b"the sky\n\nbad \xff byte\nclouds over\tthe sea\n")
    table, skipped = shards.sbu_table(urls, captions)
    assert table.to_dict("list") == {"url": ["http://s/1.jpg", "http://s/4.jpg"],
                                     "caption": ["the sky", "clouds over the sea"], "line": [1, 4]}
    assert skipped == Counter({"empty caption": 1, "non-UTF-8 line": 1})
    captions.write_bytes(b"only one caption\n")
    with pytest.raises(ValueError, match="not line-aligned"):
        shards.sbu_table(urls, captions)


def test_url_sources_call_img2dataset_with_openclip_layout(tmp_path, monkeypatch, capsys):
    """img2dataset conflicts with this venv (it needs pandas<3), so it is replaced by a recorder here that
    writes what img2dataset writes (checked by hand with img2dataset 1.47.0 on file:// URLs)."""
    (tmp_path / "cc3m.tsv").write_bytes(b"a cat\tfile:///a.jpg\n\tfile:///b.jpg\na dog\tfile:///c.jpg\n")
    output, table = tmp_path / "cc3m", tmp_path / "cc3m-urls.tsv"
    expected = dict(
        url_list=str(table), input_format="tsv", url_col="url", caption_col="caption",
        save_additional_columns=["line"], output_format="webdataset", output_folder=str(output),
        processes_count=2, thread_count=8, image_size=64, resize_mode="keep_ratio", resize_only_if_bigger=True,
        encode_format="jpg", encode_quality=95, number_sample_per_shard=100, timeout=10,
        incremental_mode="incremental", enable_wandb=False)
    cli = ["cc3m", str(tmp_path / "cc3m.tsv"), "--output", str(output), "--table", str(table), "--processes", "2",
           "--threads", "8", "--image-size", "64", "--samples-per-shard", "100"]

    shards.main([*cli, "--table-only"])
    printed = capsys.readouterr().out
    assert "skipped 1 rows: empty caption" in printed
    assert printed.splitlines()[-1] == shards.img2dataset_command(expected)
    assert pd.read_csv(table, sep="\t")["caption"].tolist() == ["a cat", "a dog"]

    monkeypatch.setitem(sys.modules, "img2dataset", None)
    with pytest.raises(SystemExit):
        shards.main(cli)
    assert "open_clip_elip[data]" in capsys.readouterr().err

    calls = []

    def fake_download(**arguments):
        calls.append(arguments)
        assert not (output / shards.SIZES_FILE).exists()  # its resume would parse sizes.json as shard stats
        with wds.TarWriter(str(output / "00000.tar")) as sink:
            sink.write({"__key__": "000000", "jpg": b"jpeg bytes", "txt": "a cat", "json": {"line": 1}})
        stats = {"successes": 1, "status_dict": {"success": 1, "HTTP Error 404: Not Found": 1}}
        (output / "00000_stats.json").write_text(json.dumps(stats))

    output.mkdir()
    (output / shards.SIZES_FILE).write_text("{}")
    monkeypatch.setitem(sys.modules, "img2dataset", types.SimpleNamespace(download=fake_download))
    shards.main(cli)
    assert calls == [expected]
    assert capsys.readouterr().out.splitlines() == [
        f"wrote 1 shards, 1 samples to {output}", "skipped 1 rows: empty caption",
        "skipped 1 rows: download failed: HTTP Error 404: Not Found"]
    assert json.loads((output / shards.SIZES_FILE).read_text()) == {"00000.tar": 1}


def test_coco_shards_read_by_open_clip_loader(coco, tmp_path):
    captions, images = coco
    table, skipped = shards.coco_table(captions)
    assert skipped == Counter({"empty caption": 1, "caption of an image_id missing from 'images'": 1})
    report = shards.write_image_shards(table, images, tmp_path / "shards", skipped=skipped, samples_per_shard=2,
                                       image_size=32, processes=2)
    assert report.skipped == skipped + Counter({"corrupt image": 1, "missing image": 1})
    assert report.sizes == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 0}
    assert json.loads((tmp_path / "shards" / shards.SIZES_FILE).read_text()) == report.sizes
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["00000.tar", "00001.tar", "00002.tar",
                                                                        shards.SIZES_FILE]

    train_data = str(tmp_path / "shards" / "{00000..00002}.tar")
    samples = wds_samples(train_data)
    assert [s["text"] for s in samples] == ["A red square on a table.", "a red square", "a green rectangle",
                                            "a blue square"]
    assert [s["json"]["caption_id"] for s in samples] == [10, 11, 12, 13]
    assert [s["image"].size for s in samples] == [(40, 30), (40, 30), (48, 32), (30, 30)]
    assert samples[3]["image"].getpixel((15, 15)) == pytest.approx((10, 10, 200), abs=8)
    images_seen, texts = open_clip_samples(train_data)
    assert len(images_seen) == len(texts) == 4 and images_seen[0].shape == (3, 32, 32)
    assert texts[2].tolist() == open_clip.tokenize("a green rectangle")[0].tolist()


def test_folder_cli_and_manifest_join_sources(coco, tmp_path, capsys):
    captions, coco_images = coco
    coco_out = tmp_path / "coco-shards"
    shards.main(["coco", str(captions), str(coco_images), "--output", str(coco_out), "--processes", "1",
                 "--samples-per-shard", "1", "--image-size", "0"])
    assert "wrote 6 shards, 4 samples" in capsys.readouterr().out
    (coco_out / "00002.tar").unlink()  # a gap: two brace ranges

    images = tmp_path / "photos"
    for i in range(3):
        save_image(images / "sub" / f"{i}.jpg", (20 + i, 20))
    table = tmp_path / "photos.tsv"
    table.write_bytes(b"file\ttext\tlicense\nsub/0.jpg\tzero\tcc\nsub/1.jpg\tone\tcc\nsub/\xff.jpg\tbad\tcc\n"
                      b"sub/2.jpg\ttwo\tcc\nsub/9.jpg\tnine\tcc\n")
    folder_out = tmp_path / "photo-shards"
    shards.main(["folder", str(table), str(images), "--path-col", "file", "--caption-col", "text",
                 "--output", str(folder_out), "--processes", "1"])
    assert capsys.readouterr().out.splitlines() == [
        f"wrote 1 shards, 3 samples to {folder_out}", "skipped 1 rows: non-UTF-8 line",
        "skipped 1 rows: missing image"]
    assert wds_samples(str(folder_out / "00000.tar"))[2]["json"]["license"] == "cc"

    shards.main(["manifest", str(coco_out), str(folder_out), "--json"])
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["train_data"] == (f"{coco_out}/{{00000..00001}}.tar::{coco_out}/{{00003..00005}}.tar"
                                      f"::{folder_out}/00000.tar")
    assert manifest["train_num_samples"] == 3 + 3  # the removed shard held one coco sample
    assert expand_urls(manifest["train_data"])[0] == [
        *(str(coco_out / f"{i:05d}.tar") for i in (0, 1, 3, 4, 5)), str(folder_out / "00000.tar")]
    assert get_dataset_size(f"{coco_out}/{{00000..00001}}.tar")[0] == 2  # OpenCLIP reads the sizes.json
    images_seen, _ = open_clip_samples(manifest["train_data"])
    assert len(images_seen) == manifest["train_num_samples"]

    shards.main(["manifest", str(folder_out)])
    assert capsys.readouterr().out.splitlines() == [f"--train-data {folder_out}/00000.tar", "--train-num-samples 3"]


def test_failed_run_leaves_no_partial_shard(coco, tmp_path, monkeypatch):
    captions, images = coco
    table, _ = shards.coco_table(captions)
    encode = shards.encode_image
    calls = []

    def fail_on_third(path, image_size):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return encode(path, image_size)

    monkeypatch.setattr(shards, "encode_image", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        shards.write_image_shards(table, images, tmp_path / "out", samples_per_shard=2, processes=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.tar"]
    assert len(wds_samples(str(tmp_path / "out" / "00000.tar"))) == 2


def test_cli_errors_name_the_problem(coco, tmp_path, capsys):
    captions, images = coco

    def error(argv):
        with pytest.raises(SystemExit) as exit_info:
            shards.main(argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "no such file: missing.json" in error(["coco", "missing.json", str(images), "--output", "x"])
    assert "no such folder" in error(["coco", str(captions), str(tmp_path / "nope"), "--output", "x"])
    assert "positive integer" in error(["coco", str(captions), str(images), "--output", "x", "--processes", "0"])
    assert "holds no .tar shards" in error(["manifest", str(tmp_path)])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "00000.tar").write_bytes(b"")
    assert "already holds 1 shards" in error(["coco", str(captions), str(images), "--output", str(tmp_path / "out")])
    (tmp_path / "out" / "00000.tar").write_bytes(b"this is no tar file" * 40)
    assert "not a readable tar" in error(["manifest", str(tmp_path / "out")])
    with tarfile.open(tmp_path / "out" / "00001.tar", "w"):
        pass
    (tmp_path / "out" / "00000_stats.json").write_text("{}")
    assert "img2dataset has not finished ['00001.tar']" in error(["manifest", str(tmp_path / "out")])
    (tmp_path / "table.csv").write_text("path,caption\n")
    assert "unknown table format '.csv'" in error(["folder", str(tmp_path / "table.csv"), str(images),
                                                   "--output", "x"])
    (tmp_path / "table.tsv").write_text("file\tcaption\n")
    assert "has no column ['path']" in error(["folder", str(tmp_path / "table.tsv"), str(images), "--output", "x"])
    (tmp_path / "table.tsv").write_text("path\tcaption\na.jpg\t \n")
    assert "no usable rows in the input: skipped {'empty caption': 1}" in error(
        ["folder", str(tmp_path / "table.tsv"), str(images), "--output", "x"])


def test_recipe_scripts_build_coco_and_print_the_manifest(coco, tmp_path):
    captions, images = coco
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(tmp_path), "PROCESSES": "1"}
    for script in sorted(RECIPES.glob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", str(RECIPES / "coco.sh")], check=True, capture_output=True, env={
        **env, "COCO_CAPTIONS": str(captions), "COCO_IMAGES": str(images), "SAMPLES_PER_SHARD": "2"})
    printed = subprocess.run(["bash", str(RECIPES / "manifest.sh")], check=True, capture_output=True, text=True,
                             env={**env, "SOURCES": str(tmp_path / "coco-shards")}).stdout
    assert printed.splitlines() == [f"--train-data '{tmp_path}/coco-shards/{{00000..00002}}.tar'",
                                    "--train-num-samples 4"]
    wrong_mix = subprocess.run(["bash", str(RECIPES / "manifest.sh")], capture_output=True, text=True,
                               env={**env, "MIX": "cc5m"})
    assert wrong_mix.returncode == 2 and "MIX must be cc3m+ or cc12m+" in wrong_mix.stderr
