"""The study (``python -m open_clip_elip.study``): its plan and trainer commands for every method, a real tiny
study (OpenCLIP's trainer, clip_benchmark, the leak diagnostic), resuming, reproducing a row, failed runs, and
the report's statistics."""
import json
import math
import sys
from unittest import mock

import pandas as pd
import pytest
from open_clip_train.params import parse_args as trainer_parse_args

from open_clip_elip import fashion_mnist, study, study_report
from open_clip_elip.bench import TowerCost, predict_elip, predict_plain, random_drop_prob, text_train_flops

TINY = ["--preset", "tiny", "--fashion-mnist", str(fashion_mnist.DEBIAN_DIR)]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    args = study.parse_args([*TINY, "--out", str(out)])
    s = study.Study(args)
    s.prepare()
    return s, s.plan(list(study.METHODS), [0, 1])


def test_every_method_is_planned_seed_by_seed(planned):
    s, runs = planned
    assert [r.key for r in runs[:len(study.METHODS)]] == [f"{m}/seed0" for m in study.METHODS]
    assert [r.seed for r in runs] == [0] * len(study.METHODS) + [1] * len(study.METHODS)


def test_trainer_commands_parse_and_carry_each_method(planned, tmp_path):
    s, runs = planned
    by_method = {r.method: r for r in runs if r.seed == 0}
    before = {"resume_from": str(tmp_path / "epoch_1.pt")}
    parsed = {}
    for method, run in by_method.items():
        command = s.trainer_command(run, tmp_path / method, before if run.after else None)
        assert command[1:3] == ["-m", "open_clip_train.main"]
        parsed[method] = trainer_parse_args(command[3:])
        assert parsed[method].seed == 0 and parsed[method].epochs == s.preset.epochs
    base = s.base
    assert parsed["stock"].model == base and parsed["stock"].force_patch_dropout is None
    assert parsed["elip"].model == f"{base}-elip" and parsed["evit"].model == f"{base}-evit"
    for method, options in study.ELIP_OPTIONS.items():
        cfg = json.loads((s.out / "configs" / f"{parsed[method].model}.json").read_text())["elip_cfg"]
        assert {k: cfg[k] for k in options} == options, method
    assert parsed["flip-50"].force_patch_dropout == 0.5
    assert parsed["low-res"].force_image_size == [28] and by_method["low-res"].eval_model == f"{base}-lowres"
    assert parsed["elip+tune"].model == base and parsed["elip+tune"].resume == before["resume_from"]
    assert parsed["stock-matched"].train_num_samples < parsed["stock"].train_num_samples


def test_costs_come_from_the_benchmark_cost_model(planned):
    s, runs = planned
    import open_clip

    stock = open_clip.create_model(s.base)
    elip = open_clip.create_model(f"{s.base}-elip").visual
    cost = TowerCost.of(stock.visual)
    text = text_train_flops(stock)
    n0 = cost.num_patches + 1
    stock_flops = predict_plain(cost, (n0,) * 6, True) + text
    elip_flops = predict_elip(elip, cost, True) + text
    by_method = {r.method: r for r in runs if r.seed == 0}
    assert by_method["stock"].train_flops == stock_flops
    assert by_method["elip"].train_flops == elip_flops < stock_flops
    assert by_method["elip-first-layer"].train_flops < elip_flops  # no look-ahead pass
    assert by_method["elip+tune"].train_flops == pytest.approx(0.5 * elip_flops + 0.5 * stock_flops)  # 2 epochs
    tokens = sum(n * k for n, k in zip(elip.tokens_per_block(), elip.elip_cfg.layout)) / 6
    prob, _ = random_drop_prob(cost.num_patches, tokens)
    assert by_method["flip-budget"].flags == ["--force-patch-dropout", f"{prob:.4f}"]
    matched = by_method["stock-matched"]
    assert matched.train_flops == pytest.approx(stock_flops * matched.samples_per_epoch / s.preset.samples_per_epoch)


@pytest.mark.parametrize("argv, named", [
    (["--methods", "stock,elip-typo"], "unknown method(s) ['elip-typo']"),
    (["--fashion-mnist", "/no/such/folder"], "no folder /no/such/folder"),
    (["--seeds", "0,x"], "comma-separated integers"),
    (["--train-data", "x/{0..1}.tar"], "go together"),
    (["--eval-dataset", "wds/x", "--eval-root", "/no/such/root"], "no folder /no/such/root"),
])
def test_bad_arguments_are_named(argv, named, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(argv)
    assert named in capsys.readouterr().err


def test_tune_brings_the_run_it_continues():
    assert study.parse_args(["--methods", "elip+tune"]).methods == ["elip", "elip+tune"]


def test_loss_curve_reads_the_trainers_lines():
    log = ("2026 | INFO | Train Epoch: 0 [ 64/128 (50%)] Data (t): 0.1 Batch (t): 0.2, 1/s, 1/s/gpu LR: 0.001 "
           "Logit Scale: 14.2 Contrastive_loss: 4.5 (4.6) Loss: 4.5 (4.6)\n"
           "2026 | INFO | Train Epoch: 1 [128/128 (100%)] Data (t): 0.1 Batch (t): 0.2, 1/s, 1/s/gpu LR: 0.001 "
           "Logit Scale: 14.2 Contrastive_loss: 3.25 (3.5) Loss: 3.25 (3.5)\n")
    curve = study.loss_curve(log, 128)
    assert curve.values.tolist() == [[0, 64, 4.5], [1, 256, 3.25]]
    with pytest.raises(ValueError, match="no 'Train Epoch"):
        study.loss_curve("nothing", 128)


# --- a real tiny study -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    study.run_study(study.parse_args([*TINY, "--out", str(out), "--methods", "stock,elip+tune,low-res"]))
    return out


def test_tiny_study_writes_the_report(tiny_study):
    frame = pd.read_csv(tiny_study / "results.csv")
    assert sorted(frame.method) == ["elip", "elip+tune", "low-res", "stock"]
    assert (frame.status == "ok").all()
    for column in ("zeroshot_top1", "zeroshot_top5", "linear_probe_top1", "train_gflops_per_image",
                   "step_time_ratio", "train_seconds"):
        assert frame[column].between(0, 1e6).all() and frame[column].notna().all(), column
    by = frame.set_index("method")
    assert by.step_time_ratio["stock"] == 1
    assert by.train_gflops_per_image["elip"] < by.train_gflops_per_image["elip+tune"] < by.train_gflops_per_image[
        "stock"]
    assert by.samples_seen["elip+tune"] == by.samples_seen["stock"]
    for method in ("elip", "elip+tune"):  # the leak diagnostic ran on the ELIP-family checkpoints
        assert 0 <= by.leak_top1_own[method] <= 100 and math.isfinite(by.leak_loss[method])
        assert 0 <= by.leak_overlap_own_shuffled_b2[method] <= 100
    assert math.isnan(by.leak_top1["stock"])
    markdown = (tiny_study / "results.md").read_text()
    for text in ("| `elip` |", "| `elip+tune` |", "Paired differences", "Is ELIP worth it?", "leak"):
        assert text in markdown
    for picture in ("pareto.png", "curves.png"):
        assert (tiny_study / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tune_curve = pd.read_csv(tiny_study / "runs" / "elip+tune" / "seed0" / "curve.csv")
    assert tune_curve.epoch.tolist() == sorted(tune_curve.epoch) and set(tune_curve.epoch) == {0, 1}


def test_finished_runs_are_not_repeated_and_nothing_is_overwritten(tiny_study, capsys):
    results = sorted((tiny_study / "runs").glob("*/seed*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    study.run_study(study.parse_args([*TINY, "--out", str(tiny_study), "--methods", "stock,elip"]))
    printed = capsys.readouterr().out
    assert printed.count("found (not repeated)") == 2 and "started" not in printed
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert len(pd.read_csv(tiny_study / "results.csv")) == 4  # merged: the earlier runs are still reported


def test_same_seed_reproduces_the_row(tiny_study, tmp_path):
    study.run_study(study.parse_args([*TINY, "--out", str(tmp_path), "--methods", "stock", "--seeds", "0"]))
    again = pd.read_csv(tmp_path / "results.csv").set_index("method").loc["stock"]
    first = pd.read_csv(tiny_study / "results.csv").set_index("method").loc["stock"]
    for column in ("zeroshot_top1", "zeroshot_top5", "linear_probe_top1"):
        assert again[column] == first[column], column
    curve = pd.read_csv(tmp_path / "runs" / "stock" / "seed0" / "curve.csv")
    assert curve.equals(pd.read_csv(tiny_study / "runs" / "stock" / "seed0" / "curve.csv"))


def test_a_crashed_run_is_reported_and_the_others_complete(tmp_path, capsys):
    real = study.Study.trainer_command

    def crash_stock(self, run, folder, before):
        if run.method == "stock":
            return [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
        return real(self, run, folder, before)

    (tmp_path / "runs" / "flip-50" / "seed0").mkdir(parents=True)  # an interrupted attempt
    (tmp_path / "runs" / "flip-50" / "seed0" / "trainer.log").write_text("cut short")
    with mock.patch.object(study.Study, "trainer_command", crash_stock):
        study.run_study(study.parse_args([*TINY, "--out", str(tmp_path), "--methods", "stock,flip-50"]))
    printed = capsys.readouterr().out
    assert "stock/seed0 FAILED" in printed and "exit status 3" in printed
    frame = pd.read_csv(tmp_path / "results.csv").set_index("method")
    assert frame.status.to_dict() == {"flip-50": "ok", "stock": "failed"}
    assert "## Failed runs" in (tmp_path / "results.md").read_text()
    kept = tmp_path / "runs" / "flip-50" / "seed0.attempt-1" / "trainer.log"
    assert kept.read_text() == "cut short"  # the interrupted attempt is kept aside, never deleted


# --- statistics ----------------------------------------------------------------------------------------------

def test_interval_is_the_t_interval():
    s = study_report.interval([1.0, 2.0, 3.0])
    assert (s["n"], s["mean"], s["sd"]) == (3, 2.0, 1.0)
    assert s["high"] - s["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(study_report.interval([5.0])["low"])


def test_paired_differences_and_verdicts():
    frame = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "status": "ok",
                          "zeroshot_top1": [50.0, 60.0, 70.0, 49.0, 59.2, 68.8]})
    d = study_report.paired(frame, "a", "b", "zeroshot_top1")
    assert d["mean"] == pytest.approx(1.0) and d["low"] > 0  # paired: the seed-to-seed spread cancels
    assert study_report.verdict(d) == "higher by 1.00 points"
    assert study_report.verdict(study_report.interval([-1.0, 1.0, 0.5])) == "not distinguishable"
    assert study_report.verdict(study_report.interval([-1.0, -1.2, -0.9])).startswith("lower by")


def test_other_data_is_taken_as_given(planned, tmp_path):
    s, _ = planned
    eval_root = next((s.out / "data").glob("fashion-mnist-wds-*"))
    args = study.parse_args([*TINY, "--out", str(tmp_path), "--train-data", s.train_data, "--train-num-samples",
                             "512", "--eval-dataset", "wds/my_set", "--eval-root", str(eval_root)])
    other = study.Study(args)
    other.prepare()
    assert (other.train_data, other.eval_dataset, other.eval_root) == (s.train_data, "wds/my_set", eval_root)
    assert other.heldout is None  # no held-out pairs given: the leak diagnostic is skipped, not guessed
    assert not (tmp_path / "data").exists()  # nothing of Fashion-MNIST built
    run = next(r for r in other.plan(["stock"], [0]))
    assert trainer_parse_args(other.trainer_command(run, tmp_path / "r", None)[3:]).train_data == s.train_data


def test_too_little_other_data_is_refused(planned, tmp_path):
    s, _ = planned
    args = study.parse_args([*TINY, "--out", str(tmp_path), "--train-data", s.train_data, "--train-num-samples", "100"])
    with pytest.raises(ValueError, match="reads 256 samples per epoch"):
        study.Study(args).prepare()
