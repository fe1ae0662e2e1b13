"""The study (``python -m open_clip_elip.study``): its plan and trainer commands for every method, a real tiny
study (OpenCLIP's trainer, clip_benchmark, the leak diagnostic), resuming, reproducing a row, failed runs, and
the report's statistics."""
import json
import math
import os
import subprocess
import sys
from unittest import mock

import pandas as pd
import pytest
from open_clip_train.params import parse_args as trainer_parse_args

from open_clip_elip import FAMILIES, fashion_mnist
from open_clip_elip import study as study_package
from open_clip_elip.bench import random_drop_prob
from open_clip_elip.core.costs import TowerCost, predict_plain, text_train_flops
from open_clip_elip.families.elip import predict_elip
from open_clip_elip.study import cli as study
from open_clip_elip.study import report as study_report
from open_clip_elip.study.configs import build_configs
from open_clip_elip.study.data import prepare_data
from open_clip_elip.study.methods import catalogue
from open_clip_elip.study.plan import PRESETS, plan
from open_clip_elip.study.runner import Runner, loss_curve

TINY = ["--preset", "tiny", "--fashion-mnist", str(fashion_mnist.DEBIAN_DIR), "--probe"]
FASHION = ["--regimes", "fashion", "--schedules", "1"]
METHODS = list(catalogue().values())  # the table, and a row for each family registered without one
NAMES = [m.name for m in METHODS]


class Planned:
    """A tiny study's data, configs, runs (every method, seeds 0 and 1) and runner, without running anything."""

    def __init__(self, out, argv=()):
        self.out = out
        self.args = study.parse_args([*TINY, "--out", str(out), *argv])
        self.preset = PRESETS["tiny"]
        self.regime = self.args.cells[0].regime
        self.data = prepare_data(self.args, self.preset, out, self.regime)
        self.configs = build_configs(self.args, self.preset, METHODS, out, self.regime)
        import open_clip

        open_clip.add_model_config(out / "configs")
        methods = [catalogue()[n] for n in (self.args.methods or NAMES)]
        self.runs, self.budgets = plan(methods, self.args.seeds or [0], self.configs, self.preset, self.regime, 1)
        self.runner = Runner(out, self.args, self.preset, {self.regime: self.data})


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    s = Planned(tmp_path_factory.mktemp("plan"), [*FASHION, "--seeds", "0,1"])
    return s, s.runs


def test_every_method_is_planned_seed_by_seed(planned):
    s, runs = planned
    assert [r.key for r in runs[:len(NAMES)]] == [f"fashion-x1/{m}/seed0" for m in NAMES]
    assert [r.seed for r in runs] == [0] * len(NAMES) + [1] * len(NAMES)


def test_the_study_package_runs_as_a_module():
    env = {**os.environ, "COLUMNS": "1000",  # no line breaks inside method names
           "OPEN_CLIP_ELIP_FAMILIES": "external_family",  # registered here too (test_families imports it)
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "open_clip_elip.study", "--help"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0 and "--methods" in result.stdout
    for name in NAMES:
        assert name in result.stdout
    assert study_package.__doc__.startswith("The study")


def test_trainer_commands_parse_and_carry_each_method(planned, tmp_path):
    s, runs = planned
    by_method = {r.method: r for r in runs if r.seed == 0}
    before = {"resume_from": str(tmp_path / "epoch_1.pt")}
    (tmp_path / "epoch_1.pt").touch()
    parsed = {}
    for method, run in by_method.items():  # (low-res+tune's resized checkpoint: the tiny study's test)
        earlier = {**before, "image_size": run.image_size}
        command = s.runner.trainer_command(run, tmp_path / method, earlier if run.after else None)
        assert command[1:3] == ["-m", "open_clip_train.main"]
        parsed[method] = trainer_parse_args(command[3:])
        assert parsed[method].seed == 0 and parsed[method].epochs == s.preset.epochs
    base = s.configs.base
    assert parsed["stock"].model == base and parsed["stock"].force_patch_dropout is None
    assert parsed["stock"].grad_clip_norm is None  # none unless asked for (the committed runs had none)
    assert parsed["elip"].model == f"{base}-elip" and parsed["evit"].model == f"{base}-evit"
    for method in (m for m in METHODS if m.family):  # each family method: its family's block, its options
        cfg = json.loads((s.out / "configs" / f"{parsed[method.name].model}.json").read_text())
        block = cfg[FAMILIES[method.family].config_block]
        assert {k: block[k] for k in method.options} == dict(method.options), method.name
    assert parsed["flip-50"].force_patch_dropout == 0.5
    assert parsed["low-res"].force_image_size == [28] and by_method["low-res"].eval_model == f"{base}-low-res"
    assert parsed["elip+tune"].model == base and parsed["elip+tune"].resume == before["resume_from"]
    tune = parsed["flip-budget+tune"]  # FLIP's unmasked tune: flip-budget's checkpoint, no patch dropout
    assert tune.model == base and tune.resume == before["resume_from"] and tune.force_patch_dropout is None
    assert by_method["flip-budget+tune"].after == "flip-budget" and parsed["flip-budget"].force_patch_dropout > 0
    assert parsed["stock-matched"].train_num_samples < parsed["stock"].train_num_samples
    assert by_method["low-res+tune"].after == "low-res" and parsed["low-res+tune"].force_image_size is None
    assert (by_method["low-res"].image_size, by_method["low-res+tune"].image_size) == (28, 32)
    # scored pruned: ELIP-family rows as their -pruned config (vision-only), EViT and ToMe as they are
    assert by_method["elip"].pruned_model == f"{base}-elip-pruned"
    assert json.loads((s.out / "configs" / f"{base}-elip-pruned.json").read_text())["elip_cfg"][
        "prune_without_text"] is True
    assert by_method["evit"].pruned_model == by_method["evit"].eval_model == f"{base}-evit"
    assert by_method["tome"].pruned_model == f"{base}-tome"
    assert by_method["stock"].pruned_model is None and by_method["elip+tune"].pruned_model is None


def test_steering_runs_on_the_models_that_choose_patches(planned):
    """ELIP rows steer as they leak; -mask rows as their own model, a +tune as the run it continues (its own keeps
    every patch); stock, evit and tome have none."""
    s, runs = planned
    by_method = {r.method: r for r in runs if r.seed == 0}
    base = s.configs.base
    assert by_method["elip"].steer_model == by_method["elip"].leak_model == f"{base}-elip"
    assert by_method["elip+tune"].steer_model == f"{base}-elip"
    for name in ("stock", "evit", "tome", "flip-budget", "low-res+tune"):
        assert by_method[name].steer_model is None, name
    assert by_method["mask-attentive-text"].steer_model == f"{base}-mask-attentive-text"
    tune = by_method["mask-attentive-text+tune"]
    assert tune.steer_model == f"{base}-mask-attentive-text" != tune.model and tune.leak_model is None


def test_a_continued_run_whose_checkpoint_is_gone_is_named(planned, tmp_path):
    s, runs = planned
    tune = next(r for r in runs if r.method == "elip+tune")
    gone = tmp_path / "runs/fashion-x1/elip/seed0/train/elip/checkpoints/epoch_1.pt"
    with pytest.raises(RuntimeError, match="which is gone.*move .*elip/seed0 aside to run elip again"):
        s.runner.trainer_command(tune, tmp_path / "tune", {"resume_from": str(gone), "image_size": 32})


def test_costs_come_from_the_benchmark_cost_model(planned):
    s, runs = planned
    import open_clip

    stock = open_clip.create_model(s.configs.base)
    elip = open_clip.create_model(f"{s.configs.base}-elip").visual
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
    flip = by_method["flip-budget"].train_flops
    assert flip < stock_flops
    assert by_method["flip-budget+tune"].train_flops == pytest.approx(0.5 * flip + 0.5 * stock_flops)
    low = by_method["low-res"].train_flops
    assert low < stock_flops and by_method["low-res+tune"].train_flops == pytest.approx(0.5 * low + 0.5 * stock_flops)
    tokens = sum(n * k for n, k in zip(elip.tokens_per_block(), elip.elip_cfg.layout)) / 6
    prob, _ = random_drop_prob(cost.num_patches, tokens)
    assert by_method["flip-budget"].flags == ["--force-patch-dropout", f"{prob:.4f}"]
    matched = by_method["stock-matched"]
    assert matched.train_flops == pytest.approx(stock_flops * matched.samples_per_epoch / s.preset.samples_per_epoch)
    # the stock compute ladder: fractions of the tiny preset's 256 samples in whole batches of 64
    assert [by_method[f"stock-{f}"].samples_per_epoch for f in ("0.67", "0.5")] == [192, 128]
    assert by_method["stock-0.5"].train_flops == pytest.approx(0.5 * stock_flops)
    assert by_method["stock-0.67"].train_flops == pytest.approx(0.75 * stock_flops)
    for method in (m for m in METHODS if m.family and not m.continues):  # its family's own cost model
        model = open_clip.create_model(by_method[method.name].model)
        family = FAMILIES[method.family]
        assert by_method[method.name].train_flops == family.flops(model.visual, cost, True) + text, method.name


@pytest.mark.parametrize("argv, named", [
    (["--methods", "stock,elip-typo"], "unknown method(s) ['elip-typo']"),
    (["--fashion-mnist", "/no/such/folder"], "no folder /no/such/folder"),
    (["--seeds", "0,x"], "comma-separated integers"),
    (["--train-data", "x/{0..1}.tar"], "go together"),
    (["--eval-dataset", "wds/x", "--eval-root", "/no/such/root"], "no folder /no/such/root"),
    (["--regimes", "fashion,beach"], "unknown regime(s) ['beach']"),
    (["--schedules", "3"], "no cell of the default preset matches --schedules 3 (with --regimes (any) --schedules "
                          "3); its cells: fashion-x1, scenes-x2, fashion-x4"),
    (["--schedules", "1,3"], "no cell of the default preset matches --schedules 3 (with --regimes (any) --schedules "
                            "1,3)"),  # in a list as alone: not the 1x cell silently
    (["--regimes", "fashion,scenes", "--schedules", "1"], "matches --regimes scenes (with --regimes fashion,scenes "
                                                          "--schedules 1)"),
    (["--seeds", "0,1,0"], "--seeds: seed 0 given twice"),
    (["--warmup", "1.5"], "--warmup is a share of the steps in [0, 1), got 1.5"),
    (["--regimes", "scenes", "--train-data", "x/{0..1}.tar", "--train-num-samples", "9"], "exclude each other"),
])
def test_bad_arguments_are_named(argv, named, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(argv)
    assert named in capsys.readouterr().err


def test_tune_brings_the_run_it_continues():
    cells = study.parse_args(["--methods", "elip+tune,low-res+tune"]).cells
    assert [c.methods for c in cells] == [("elip", "elip+tune", "low-res", "low-res+tune")] * 3


def test_the_preset_cells_are_chosen_by_regime_and_schedule(capsys):
    assert [c.name for c in study.parse_args([]).cells] == ["fashion-x1", "scenes-x2", "fashion-x4"]
    assert [c.name for c in study.parse_args(["--schedules", "1"]).cells] == ["fashion-x1"]
    assert [c.name for c in study.parse_args(["--regimes", "scenes"]).cells] == ["scenes-x2"]
    cells = study.parse_args(["--train-data", "x/{0..1}.tar", "--train-num-samples", "99999"]).cells
    assert [c.name for c in cells] == ["custom-x1", "custom-x2", "custom-x4"]  # other data: one regime, each schedule
    assert study.main(["--list", "--regimes", "fashion", "--schedules", "4", "--seeds", "7"]) == 0
    assert capsys.readouterr().out == ("fashion-x4: seeds 7: methods stock,stock-matched,stock-0.67,stock-0.5,elip,"
                                         "low-res,low-res+tune\n")
    assert study.main(["--list", "--regimes", "scenes", "--methods", "stock,evit,elip"]) == 0
    assert capsys.readouterr().out == "scenes-x2: seeds 0,1,2,3,4: methods stock,elip; seeds 0,1,2: methods evit\n"


def test_a_cells_methods_run_their_own_seeds(tmp_path):
    """A method with more (or fewer) seeds than its cell's gets them, seed by seed in the cell's order."""
    from open_clip_elip.study.cli import seeds_of
    from open_clip_elip.study.plan import Cell
    cell = Cell("fashion", 1, ("stock", "evit"), 2, (("stock", 4),))
    args = study.parse_args(["--methods", "stock,evit"])
    assert [seeds_of(args, cell)(name) for name in ("stock", "evit")] == [[0, 1, 2, 3], [0, 1]]
    args = study.parse_args(["--methods", "stock,evit", "--seeds", "5"])
    assert [seeds_of(args, cell)(name) for name in ("stock", "evit")] == [[5], [5]]  # --seeds: every method's


def test_trainer_settings_come_from_the_regime_then_the_command_line():
    """fashion keeps the committed runs' settings, scenes its pilot's; the command line goes over both; clipping 0
    is none."""
    from open_clip_elip.study.data import training_settings
    args = study.parse_args([])
    assert training_settings(args, "fashion") == {"lr": 1e-3, "warmup": 0.1, "grad_clip_norm": None}
    assert training_settings(args, "scenes") == {"lr": 2e-3, "warmup": 0.2, "grad_clip_norm": 1.0}
    args = study.parse_args(["--lr", "5e-4", "--grad-clip-norm", "0"])
    assert training_settings(args, "scenes") == {"lr": 5e-4, "warmup": 0.2, "grad_clip_norm": None}
    assert training_settings(args, "a-pilot-candidate") == {"lr": 5e-4, "warmup": 0.1, "grad_clip_norm": None}


def test_loss_curve_reads_the_trainers_lines():
    log = ("2026 | INFO | Train Epoch: 0 [ 64/128 (50%)] Data (t): 0.1 Batch (t): 0.2, 1/s, 1/s/gpu LR: 0.001 "
           "Logit Scale: 14.2 Contrastive_loss: 4.5 (4.6) Loss: 4.5 (4.6)\n"
           "2026 | INFO | Train Epoch: 1 [128/128 (100%)] Data (t): 0.1 Batch (t): 0.2, 1/s, 1/s/gpu LR: 0.001 "
           "Logit Scale: 14.2 Contrastive_loss: 3.25 (3.5) Loss: 3.25 (3.5)\n")
    curve = loss_curve(log, 128)
    assert curve.values.tolist() == [[0, 64, 4.5], [1, 256, 3.25]]
    with pytest.raises(ValueError, match="no 'Train Epoch"):
        loss_curve("nothing", 128)


# --- a real tiny study -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Three cells in one folder: fashion at 1x (the continued runs, EViT), at 2x and scenes at 1x."""
    out = tmp_path_factory.mktemp("study")
    study.run_study(study.parse_args([*TINY, *FASHION, "--out", str(out),
                                      "--methods", "stock,elip+tune,low-res+tune,evit"]))
    study.run_study(study.parse_args([*TINY, "--out", str(out), "--schedules", "2", "--methods", "stock"]))
    study.run_study(study.parse_args([*TINY, "--out", str(out), "--regimes", "scenes", "--methods", "elip"]))
    return out


def test_tiny_study_writes_the_report(tiny_study):
    frame = pd.read_csv(tiny_study / "results.csv")
    assert (frame.status == "ok").all()
    cells = frame.groupby(["regime", "schedule"]).method.apply(sorted).to_dict()
    assert cells == {("fashion", 1): ["elip", "elip+tune", "evit", "low-res", "low-res+tune", "stock"],
                     ("fashion", 2): ["stock"], ("scenes", 1): ["elip"]}
    one = frame[(frame.regime == "fashion") & (frame.schedule == 1)]
    for column in ("zeroshot_top1", "zeroshot_top5", "linear_probe_top1", "train_gflops_per_image",
                   "step_time_ratio", "train_seconds"):
        assert one[column].between(0, 1e6).all() and one[column].notna().all(), column
    by = one.set_index("method")
    assert by.step_time_ratio["stock"] == 1
    assert by.train_gflops_per_image["elip"] < by.train_gflops_per_image["elip+tune"] < by.train_gflops_per_image[
        "stock"]
    assert by.samples_seen["elip+tune"] == by.samples_seen["stock"] == by.samples_seen["low-res+tune"]
    longer = frame[frame.schedule == 2].set_index("method")
    assert longer.samples_seen["stock"] == 2 * by.samples_seen["stock"]
    for method in ("elip", "elip+tune"):  # the leak diagnostic ran on the ELIP-family checkpoints
        assert 0 <= by.leak_top1_own[method] <= 100 and math.isfinite(by.leak_loss[method])
        assert 0 <= by.leak_overlap_own_shuffled_b2[method] <= 100
    assert math.isnan(by.leak_top1["stock"])
    # scored pruned: elip's own evaluation (vision-only pruning), evit's ordinary one, none for stock
    assert 0 <= by.zeroshot_top1_pruned["elip"] <= 100
    assert by.zeroshot_top1_pruned["evit"] == by.zeroshot_top1["evit"]
    assert by[["zeroshot_top1_pruned"]].drop(["elip", "evit"]).isna().all().all()
    pruned_eval = json.loads((tiny_study / "runs/fashion-x1/elip/seed0/eval/zeroshot_classification_pruned.json")
                             .read_text())
    assert pruned_eval["model"] == "ViT-FMNIST-32px-elip-pruned"
    markdown = (tiny_study / "results.md").read_text()
    for text in ("## fashion, 1x schedule", "## fashion, 2x schedule", "## scenes, 1x schedule", "| `elip` |",
                 "| `elip+tune` |", "scored pruned", "Key comparisons", "leak", "scenes-d0.5-0.5-preview.png"):
        assert text in markdown, text
    for picture in ("pareto_fashion.png", "pareto_scenes.png", "curves_fashion-x1.png", "scenes-d0.5-0.5-preview.png"):
        assert (tiny_study / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tune_curve = pd.read_csv(tiny_study / "runs" / "fashion-x1" / "elip+tune" / "seed0" / "curve.csv")
    assert tune_curve.epoch.tolist() == sorted(tune_curve.epoch) and set(tune_curve.epoch) == {0, 1}
    settings = json.loads((tiny_study / "settings.json").read_text())
    assert set(settings["cells"]) == {"fashion-x1", "fashion-x2", "scenes-x1"}  # each invocation's, merged


def test_low_res_tune_resumes_at_full_size(tiny_study):
    import open_clip
    import torch

    folder = tiny_study / "runs" / "fashion-x1" / "low-res+tune" / "seed0"
    record = json.loads((folder / "result.json").read_text())
    assert (record["image_size"], record["eval_model"]) == (32, "ViT-FMNIST-32px")
    low = torch.load(json.loads((folder.parent.parent / "low-res" / "seed0" / "result.json").read_text())[
        "resume_from"], weights_only=False)
    resized = torch.load(folder / "resumed_at_full_size.pt", weights_only=False)
    assert low["state_dict"]["visual.positional_embedding"].shape[0] == 7 * 7 + 1
    assert resized["state_dict"]["visual.positional_embedding"].shape[0] == 8 * 8 + 1
    assert "resumed_at_full_size.pt' (epoch 1)" in (folder / "train" / "low-res+tune" / "out.log").read_text()
    final = torch.load(folder / "train" / "low-res+tune" / "checkpoints" / "epoch_2.pt", weights_only=False)
    model = open_clip.create_model("ViT-FMNIST-32px")
    model.load_state_dict(final["state_dict"])  # a full-size model, strictly


def test_the_scenes_regime_trains_and_scores_on_its_canvases(tiny_study):
    record = json.loads((tiny_study / "runs/scenes-x1/elip/seed0/result.json").read_text())
    assert record["model"] == "ViT-Scenes-64px-elip" and record["image_size"] == 64
    config = json.loads((tiny_study / "configs" / "ViT-Scenes-64px.json").read_text())["vision_cfg"]
    assert (config["image_size"] // config["patch_size"]) ** 2 == 64  # the fashion regime's token count
    evaluation = json.loads((tiny_study / "runs/scenes-x1/elip/seed0/eval/zeroshot_classification.json").read_text())
    assert evaluation["dataset"] == "wds/fashion_mnist_scenes"
    command = (tiny_study / "runs/scenes-x1/elip/seed0/command.txt").read_text()
    assert "scenes-d0.5-0.5-train-512" in command  # the regime's layout names its data
    assert "--lr 0.002 " in command and "--grad-clip-norm 1.0" in command  # and its trainer settings
    # the steering diagnostic ran on its held-out two-item canvases (ELIP reads the caption: lam 0.8)
    assert 0 <= record["steer_kept_named"] <= 100 and math.isfinite(record["steer_steering"])
    assert record["steer_steering"] == pytest.approx(json.loads(
        (tiny_study / "runs/scenes-x1/elip/seed0/steering.json").read_text())["steering"])
    assert "Does the caption steer the kept tokens" in (tiny_study / "results.md").read_text()
    assert "steer_steering" not in json.loads((tiny_study / "runs/fashion-x1/elip+tune/seed0/result.json").read_text())


def test_finished_runs_are_not_repeated_and_nothing_is_overwritten(tiny_study, capsys):
    results = sorted((tiny_study / "runs").glob("*/*/seed*/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    study.run_study(study.parse_args([*TINY, *FASHION, "--out", str(tiny_study), "--methods", "stock,elip"]))
    printed = capsys.readouterr().out
    assert printed.count("found (not repeated)") == 2 and "started" not in printed
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert len(pd.read_csv(tiny_study / "results.csv")) == 8  # merged: the earlier runs are still reported


def test_same_seed_reproduces_the_row(tiny_study, tmp_path):
    study.run_study(study.parse_args([*TINY, *FASHION, "--out", str(tmp_path), "--methods", "stock", "--seeds", "0"]))
    again = pd.read_csv(tmp_path / "results.csv").set_index("method").loc["stock"]
    first = pd.read_csv(tiny_study / "results.csv").query("schedule == 1").set_index("method").loc["stock"]
    for column in ("zeroshot_top1", "zeroshot_top5", "linear_probe_top1"):
        assert again[column] == first[column], column
    curve = pd.read_csv(tmp_path / "runs" / "fashion-x1" / "stock" / "seed0" / "curve.csv")
    assert curve.equals(pd.read_csv(tiny_study / "runs" / "fashion-x1" / "stock" / "seed0" / "curve.csv"))


def test_a_crashed_run_is_reported_and_the_others_complete(tmp_path, capsys):
    real = Runner.trainer_command

    def crash_stock(self, run, folder, before):
        if run.method == "stock":
            return [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
        return real(self, run, folder, before)

    interrupted = tmp_path / "runs" / "fashion-x1" / "flip-50" / "seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "trainer.log").write_text("cut short")
    with mock.patch.object(Runner, "trainer_command", crash_stock):
        study.run_study(study.parse_args([*TINY, *FASHION, "--out", str(tmp_path), "--methods", "stock,flip-50"]))
    printed = capsys.readouterr().out
    assert "fashion-x1/stock/seed0 FAILED" in printed and "exit status 3" in printed
    frame = pd.read_csv(tmp_path / "results.csv").set_index("method")
    assert frame.status.to_dict() == {"flip-50": "ok", "stock": "failed"}
    assert "## Failed runs" in (tmp_path / "results.md").read_text()
    kept = interrupted.with_name("seed0.attempt-1") / "trainer.log"
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
    train = s.data.train_data
    other = Planned(tmp_path, ["--train-data", train, "--train-num-samples", "512", "--eval-dataset", "wds/my_set",
                               "--eval-root", str(eval_root), "--methods", "stock"])
    assert (other.data.train_data, other.data.eval_dataset, other.data.eval_root) == (train, "wds/my_set", eval_root)
    assert other.data.heldout is None  # no held-out pairs given: the leak diagnostic is skipped, not guessed
    assert not (tmp_path / "data").exists()  # nothing of Fashion-MNIST built
    run = other.runs[0]
    assert trainer_parse_args(other.runner.trainer_command(run, tmp_path / "r", None)[3:]).train_data == train


def test_too_little_other_data_is_refused(planned, tmp_path):
    s, _ = planned
    with pytest.raises(ValueError, match="reads 256 samples per epoch"):
        Planned(tmp_path, ["--train-data", s.data.train_data, "--train-num-samples", "100"])
