"""Results tables from clip_benchmark JSON files: values, layout, percentages, bad files."""
import json

import pandas as pd
import pytest

from open_clip_elip.results import PAPER_TABLE6, PERCENT_COLUMN, load_results, main, results_table

LP_EXTRAS = {"lp_acc5": 0.99, "lp_mean_per_class_recall": 0.9, "weight_decay": 0, "epochs": 10, "seed": 0,
             "fewshot_k": -1, "normalized": True}


def write_result(folder, model, dataset, task, metrics, pretrained="epoch_32.pt"):
    """A result file as ``clip_benchmark eval`` writes it (cli.run's dump, its default file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{dataset.replace('wds/', '')}_{pretrained}_{model}_en_{task}.json"
    dump = {"dataset": dataset, "model": model, "pretrained": f"/ckpts/{model}/{pretrained}", "task": task,
            "metrics": metrics, "language": "en"}
    (folder / name).write_text(json.dumps(dump))
    return folder / name


def write_run(folder, model, zs_acc1, zs_acc5, lp_cifar10, pretrained="epoch_32.pt", lp_dataset="cifar10"):
    write_result(folder, model, "imagenet1k", "zeroshot_classification",
                 {"acc1": zs_acc1, "acc5": zs_acc5, "mean_per_class_recall": zs_acc1}, pretrained)
    write_result(folder, model, lp_dataset, "linear_probe", {"lp_acc1": lp_cifar10, **LP_EXTRAS}, pretrained)


def test_table_layout_values_and_percentage(tmp_path, capsys):
    write_run(tmp_path / "stock", "ViT-B-16", 0.20, 0.40, 0.90)
    write_run(tmp_path / "elip", "ViT-B-16-elip", 0.19, 0.40, 0.918, lp_dataset="wds/cifar10")
    assert main([str(tmp_path / "stock"), str(tmp_path / "elip"), "--out", str(tmp_path / "table")]) == 0

    table = pd.read_csv(tmp_path / "table.csv", index_col="model")
    assert list(table.index) == ["ViT-B-16", "ViT-B-16-elip"]
    assert list(table.columns) == ["imagenet1k acc1", "imagenet1k acc5", "cifar10 lp_acc1", PERCENT_COLUMN]
    assert table.loc["ViT-B-16", "imagenet1k acc1"] == pytest.approx(20.0)
    assert table.loc["ViT-B-16-elip", "cifar10 lp_acc1"] == pytest.approx(91.8)  # wds/cifar10 joins cifar10
    assert table.loc["ViT-B-16-elip", PERCENT_COLUMN] == pytest.approx((95 + 100 + 102) / 3)
    assert pd.isna(table.loc["ViT-B-16", PERCENT_COLUMN])
    markdown = (tmp_path / "table.md").read_text()
    assert markdown == capsys.readouterr().out.split("wrote")[0]
    assert "| ViT-B-16-elip | 19.00 | 40.00 | 91.80 | 99.00 |" in markdown.splitlines()


def test_paper_rows(tmp_path):
    write_run(tmp_path, "ViT-S-16", 0.18, 0.37, 0.95)
    results, errors = load_results([tmp_path])
    table = results_table(results, paper=True)
    clip, elip = PAPER_TABLE6[("ViT-B/16", "CLIP", "CC3M+")], PAPER_TABLE6[("ViT-B/16", "ELIP", "CC3M+")]
    assert errors == [] and table.loc["ViT-S-16", "imagenet1k acc1"] == pytest.approx(18.0)
    assert table.loc["paper ViT-B/16 ELIP CC3M+", ["imagenet1k acc1", "imagenet1k acc5"]].tolist() == [20.63, 40.48]
    assert table.loc["paper ViT-B/16 ELIP CC3M+", PERCENT_COLUMN] == pytest.approx(
        sum(100 * e / c for e, c in zip(elip, clip)) / len(clip))
    assert pd.isna(table.loc["paper ViT-B/16 CLIP CC3M+", PERCENT_COLUMN])
    assert table.columns[-1] == PERCENT_COLUMN and "imagenet-r lp_acc1" in table.columns


def test_baseline_among_several_checkpoints(tmp_path, capsys):
    write_run(tmp_path, "ViT-B-16", 0.20, 0.40, 0.80, pretrained="a.pt")
    write_run(tmp_path, "ViT-B-16", 0.25, 0.50, 0.50, pretrained="b.pt")
    write_run(tmp_path, "ViT-B-16-elip", 0.20, 0.50, 0.40)
    assert main([str(tmp_path)]) == 2  # two ViT-B-16 rows: which is the stock model?
    assert "ViT-B-16 a.pt" in capsys.readouterr().err
    table = results_table(load_results([tmp_path])[0], baseline="ViT-B-16 b.pt")
    assert table.loc["ViT-B-16-elip", PERCENT_COLUMN] == pytest.approx((80 + 100 + 80) / 3)
    assert table.loc["ViT-B-16 a.pt", PERCENT_COLUMN] == pytest.approx((80 + 80 + 160) / 3)
    assert pd.isna(table.loc["ViT-B-16 b.pt", PERCENT_COLUMN])


def test_unreadable_files_are_named_and_the_rest_tabulated(tmp_path, capsys):
    write_run(tmp_path / "run", "ViT-B-16", 0.20, 0.40, 0.90)
    (tmp_path / "run" / "corrupt.json").write_text('{"dataset": "cifar10", "metr')
    (tmp_path / "run" / "other.json").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    missing = tmp_path / "missing.json"
    assert main([str(tmp_path / "run"), str(missing), str(tmp_path / "empty")]) == 0
    out, err = capsys.readouterr()
    assert {line.split(": ")[1] for line in err.splitlines()} == {
        str(tmp_path / "run" / "corrupt.json"), str(tmp_path / "run" / "other.json"), str(missing),
        str(tmp_path / "empty")}
    assert "| ViT-B-16 | 20.00 | 40.00 | 90.00 |  |" in out.splitlines()
    assert main([str(missing)]) == 1
    assert "no results could be read" in capsys.readouterr().err
