"""The scenes pilot (``python -m open_clip_elip.study.pilot``): a candidate's data, config and stock seeds through
the study's runner (a tiny smoke run), its table, the bar, and candidates that must not be mixed up."""
import json

import pandas as pd
import pytest

from open_clip_elip.study import pilot
from open_clip_elip.study.runner import warmup_steps

TINY = ["--canvas", "32", "--patch", "4", "--scale", "0.5", "0.5", "--distractor-scale", "0.4", "0.4",
        "--classes", "5", "--width", "32", "--layers", "2", "--batch-size", "16", "--steps", "20",
        "--train-images", "120", "--test-samples", "40", "--seeds", "0,1", "--grad-clip-norm", "1"]


@pytest.fixture(scope="module")
def piloted(digit_idx, tmp_path_factory):
    out = tmp_path_factory.mktemp("pilot")
    assert pilot.main(["--out", str(out), "--name", "c32-d04", "--fashion-mnist", str(digit_idx), *TINY]) == 0
    return out


def test_a_candidate_runs_its_stock_seeds_and_the_table_reads_them(piloted):
    out = piloted
    records = [json.loads((out / f"runs/c32-d04-x1/stock/seed{k}/result.json").read_text()) for k in (0, 1)]
    assert all(r["status"] == "ok" and r["samples_seen"] == 20 * 16 for r in records)
    command = (out / "runs/c32-d04-x1/stock/seed0/command.txt").read_text()
    assert "--warmup 2" in command and "--grad-clip-norm 1.0" in command
    config = json.loads((out / "c32-d04/configs/ViT-Pilot-c32-d04.json").read_text())
    assert (config["vision_cfg"]["image_size"], config["vision_cfg"]["patch_size"], config["vision_cfg"]["layers"]) \
        == (32, 4, 2)
    assert (out / "c32-d04/eval/classnames.txt").read_text().split() == ["t-shirt", "trouser", "pullover", "dress",
                                                                         "coat"]
    table = pd.read_csv(out / "pilot.csv").set_index("candidate").loc["c32-d04"]
    top1 = pd.Series([r["zeroshot_top1"] for r in records])
    assert table.top1_mean == pytest.approx(top1.mean(), abs=1e-4)
    assert table.top1_sd == pytest.approx(top1.std(ddof=1), abs=1e-4) and table.seeds == "0,1"
    assert not table.meets_bar  # two seeds and an untrained model
    assert "| c32-d04 | 32 / 4 | 0.4-0.4 | 5 | 32 x 2 | 16 x 20 |" in (out / "pilot.md").read_text()


def test_a_name_keeps_its_knobs_and_finished_seeds_are_not_rerun(piloted, digit_idx, capsys):
    out = piloted
    stamp = (out / "runs/c32-d04-x1/stock/seed0/result.json").stat().st_mtime_ns
    assert pilot.main(["--out", str(out), "--name", "c32-d04", "--fashion-mnist", str(digit_idx), *TINY]) == 0
    assert "found (not repeated)" in capsys.readouterr().out
    assert (out / "runs/c32-d04-x1/stock/seed0/result.json").stat().st_mtime_ns == stamp
    assert pilot.main(["--out", str(out), "--name", "c32-d04", "--fashion-mnist", str(digit_idx), *TINY,
                       "--lr", "0.01"]) == 2
    assert "was run with other knobs" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [(["--name", "a b"], "use letters, digits"),
                                         (["--name", "x", "--steps", "25"], "a multiple of 10"),
                                         (["--name", "x", "--warmup", "1"], "share of the steps")])
def test_bad_arguments_are_named(argv, named, tmp_path, capsys):
    with pytest.raises(SystemExit):
        pilot.parse_args(["--out", str(tmp_path), *argv])
    assert named in capsys.readouterr().err


def test_warmup_is_a_share_of_the_steps():
    assert [warmup_steps(s, w) for s, w in ((240, 0.1), (960, 0.1), (8, 0.1), (200, 0.05), (20, 0.1))] == [
        24, 96, 1, 10, 2]
