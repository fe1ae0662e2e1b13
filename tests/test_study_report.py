"""The study's multi-cell report, from synthetic run folders whose numbers are crafted so the right answers are
known: per-cell step times, key comparisons (checked against scipy's t), stability, schedule moves, the pruned
column, the plots and failed runs."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from open_clip_elip.study import report

STOCK = [70.0, 71.0, 69.0, 70.5, 69.5]  # sd 0.79 on 5 seeds: stable
ELIP_GAIN = [1.0, 1.2, 0.8, 1.1, 0.9]  # elip minus stock: higher by 1.00
ELIP_PRUNING = [0.3, 0.4, 0.2, 0.35, 0.25]  # elip unpruned minus elip scored pruned
ELIP_OVER_MATCHED = [3.0, 3.5, 2.5, 3.2, 2.8]  # elip minus stock-matched: the crafted pair
ELIP_OVER_EVIT = [0.5, -0.5, 0.2, -0.2, 0.0]  # not distinguishable
FASHION_X1 = {  # method -> (zero-shot top-1 per seed, GFLOPs per image, seconds per step per seed)
    "stock": (STOCK, 1.0, [1.0, 1.2, 0.9, 1.1, 1.0]),
    "elip": (np.add(STOCK, ELIP_GAIN), 0.7, [0.8] * 5),
    "stock-matched": (np.add(STOCK, ELIP_GAIN) - ELIP_OVER_MATCHED, 0.7, [1.0] * 5),
    "evit": (np.add(STOCK, ELIP_GAIN) - ELIP_OVER_EVIT, 0.75, [0.8] * 5),
    "low-res": (np.add(STOCK, [-5.0, -5.2, -4.8, -5.1, -4.9]), 0.5, [0.5] * 5),
    "low-res+tune": (np.add(STOCK, [-1.0, -0.5, -1.5, -0.8, -1.2]), 0.6, [0.6] * 5),
}
STEERING = [4.0, 6.0, 5.0]  # elip's steering per scenes seed, points (mean over blocks)
SCENES_X1 = {"stock": ([40.0, 45.0, 50.0], 1.0, [2.0, 2.2, 2.4]),  # sd 5: not stable
             "elip": ([40.5, 48.0, 48.0], 0.7, [1.1] * 3)}  # elip minus stock: CI half-width far over 2
FASHION_X4 = {"stock": ([80.0, 80.5, 79.5], 1.0, [4.0, 4.0, 5.0]),
              "elip": ([79.0, 79.4, 78.6], 0.7, [2.0] * 3)}  # lower by 1.00: the verdict moved from 1x
METHODS = {m: f"the {m} method" for m in ("stock", "stock-matched", "elip", "evit", "tome", "low-res", "low-res+tune")}
LEAK = {"leak_top1": 2.0, "leak_top1_own": 30.0, "leak_top1_unguided": 28.0, "leak_top1_shuffled": 27.0,
        "leak_loss": 0.05, "leak_overlap_own_shuffled_b2": 80.0, "leak_overlap_own_vision_b2": 75.0,
        "leak_norm_text_term": 1.5, "leak_norm_cls_term": 2.5}
CELL = {"regime_description": "Fashion-MNIST with captions from class names.", "train_data": "train-{0..5}.tar",
        "eval_dataset": "wds/fashion", "base_model": "ViT-tiny", "image_size": 32, "stock_matched_fraction": 0.7,
        "flip_budget_drop": 0.3, "low_res_size": 24}


def write_run(out, regime, schedule, method, seed, record):
    folder = out / "runs" / f"{regime}-x{schedule}" / method / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(  # the fields the runner writes into every record
        {"method": method, "seed": seed, "regime": regime, "schedule": schedule, **record}))
    if record["status"] == "ok":
        pd.DataFrame({"epoch": [0, 0, 1, 1], "samples": [64, 128, 192, 256],
                      "loss": np.array([4.0, 3.5, 3.2, 3.0]) - 0.01 * seed}).to_csv(folder / "curve.csv", index=False)


def write_cell(out, regime, schedule, cell):
    for method, (top1, gflops, seconds) in cell.items():
        for seed, (acc, sps) in enumerate(zip(top1, seconds, strict=True)):
            record = {"status": "ok", "zeroshot_top1": float(acc),
                      "zeroshot_top5": float(acc) + 20, "train_gflops_per_image": gflops, "seconds_per_step": sps,
                      "train_seconds": 100 * sps, "samples_seen": 1000 * schedule}
            if regime == "fashion" and schedule == 1:
                record["linear_probe_top1"] = float(acc) + 5
            if method == "evit":
                record["zeroshot_top1_pruned"] = float(acc)
            if method == "elip":
                record["zeroshot_top1_pruned"] = float(acc) - (ELIP_PRUNING[seed] if schedule == 1 else 0.3)
                record.update(LEAK if schedule == 1 and regime == "fashion" else {})
                if regime == "scenes":
                    record.update({"steer_steering": STEERING[seed], "steer_steering_b2": STEERING[seed] + 1,
                                   "steer_steering_b3": STEERING[seed] - 1, "steer_kept_named": 40.0 + seed,
                                   "steer_kept_other": 30.0, "steer_kept_background": 30.0 - seed})
            write_run(out, regime, schedule, method, seed, record)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    write_cell(out, "fashion", 1, FASHION_X1)
    write_cell(out, "scenes", 1, SCENES_X1)
    write_cell(out, "fashion", 4, FASHION_X4)
    # a crashed run
    write_run(out, "fashion", 1, "tome", 0, {"status": "failed", "error": "boom\nTraceback ..."})
    preset = {"samples_per_epoch": 3072, "epochs": 10, "batch_size": 128, "train_images": 30000,
              "test_samples": 10000, "probe_samples": 10000, "seeds": 5, "width": 64}
    settings = {"command_line": "--jobs 2", "threads": 1, "jobs": 2, "lr": 0.001, "preview": "preview.png",
                "cells": {"fashion-x1": {**CELL, "regime": "fashion", "schedule": 1, "preset_values": preset},
                          "fashion-x4": {**CELL, "regime": "fashion", "schedule": 4,
                                         "preset_values": {**preset, "epochs": 40}}}}  # scenes-x1: none saved
    written = report.write_report(out, settings, METHODS)
    return out, written, (out / "results.md").read_text()


def section(markdown, *headings):
    """The text after each heading in turn, up to the next heading of the last one's level."""
    for heading in headings:
        markdown = markdown.split(heading + "\n", 1)[1]
    level = headings[-1].split(" ")[0] + " "
    return markdown.split("\n" + level, 1)[0]


def first_table(text):
    """The first markdown table in ``text``, one dict per row."""
    lines = text[text.index("\n|") + 1:].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split(" | ")], strict=True)) for line in lines[2:]]


def test_results_csv_has_a_row_per_run_and_per_cell_step_times(study):
    out, _, _ = study
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 6 * 5 + 2 * 3 + 2 * 3 + 1
    assert list(frame.columns[:5]) == ["regime", "schedule", "method", "seed", "status"]
    assert list(frame.columns).index("zeroshot_top1_pruned") == list(frame.columns).index("zeroshot_top5") + 1
    assert list(dict.fromkeys(zip(frame.regime, frame.schedule))) == [("fashion", 1), ("fashion", 4), ("scenes", 1)]
    stock = frame[frame.method == "stock"].groupby(["regime", "schedule"]).step_time_ratio.median()
    assert (stock == 1).all() and len(stock) == 3
    elip = frame[frame.method == "elip"].groupby(["regime", "schedule"]).step_time_ratio.mean()
    assert elip.to_dict() == pytest.approx({("fashion", 1): 0.8, ("fashion", 4): 0.5, ("scenes", 1): 0.5})
    failed = frame[frame.status == "failed"].iloc[0]
    assert (failed.regime, failed.schedule, failed.method) == ("fashion", 1, "tome")


def test_verdicts_csv_holds_the_key_comparisons(study):
    out, _, _ = study
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts.columns) == report.VERDICT_COLUMNS
    fashion = verdicts[(verdicts.regime == "fashion") & (verdicts.schedule == 1)]
    equal = report.EQUAL_FLOPS
    assert list(zip(fashion.method, fashion.reference)) == [  # tome only failed
        ("elip", equal), ("evit", equal), ("low-res", equal), ("low-res+tune", equal),
        ("elip", "low-res"), ("elip", "low-res+tune"), ("elip", "evit"),
        ("elip", "stock"),  # stock-matched: read by the ladder row
        ("elip scored pruned", "elip unpruned"), ("elip scored pruned", "evit")]
    elip = fashion[fashion.method == "elip"].set_index("reference")
    row = elip.loc[equal]  # elip costs what stock-matched costs: the crafted pair
    diff = np.array(ELIP_OVER_MATCHED)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    assert row.n == 5 and row["mean"] == pytest.approx(diff.mean(), abs=1e-4)
    assert (row.low, row.high, row.half_width) == pytest.approx((diff.mean() - half, diff.mean() + half, half),
                                                                abs=1e-4)
    assert row.verdict == "higher by 3.00 points" and row.cost_ratio == pytest.approx(1.0)
    assert elip.verdict["evit"] == "not distinguishable"
    pruned = fashion[fashion.reference == "elip unpruned"].iloc[0]
    assert pruned["mean"] == pytest.approx(-np.mean(ELIP_PRUNING), abs=1e-4)
    assert pruned.verdict.startswith("lower by")
    scenes = verdicts[(verdicts.regime == "scenes") & (verdicts.method == "elip")].set_index("reference")
    assert scenes.half_width["stock"] > 2 and scenes.cost_ratio["stock"] == pytest.approx(1 / 0.7, abs=1e-4)


def test_stability_section(study):
    _, _, markdown = study
    assert "evaluated by clip_benchmark (zero-shot and linear probe)." in markdown  # the fixture has probe scores
    text = section(markdown, "## Stability: stock's spread over seeds")
    assert "- fashion, 1x: stock zero-shot top-1 mean 70.00, sd 0.79, n = 5; stable: yes." in text
    assert "- scenes, 1x: stock zero-shot top-1 mean 45.00, sd 5.00, n = 3; stable: not yet (3 of 5 seeds)." in text
    assert "- fashion, 4x: stock zero-shot top-1 mean 80.00, sd 0.50, n = 3; stable: not yet (3 of 5 seeds)." in text
    assert "not met in fashion 4x, scenes 1x." in text


def test_cells_are_reported_in_order_with_their_tables(study):
    _, _, markdown = study
    starts = [markdown.index(f"## {cell} schedule\n") for cell in ("fashion, 1x", "fashion, 4x", "scenes, 1x")]
    assert starts == sorted(starts)
    cells = {(r["regime"], r["schedule"]): r for r in first_table(section(markdown, "## Cells"))}
    assert cells["fashion", "4x"]["samples (epochs x per epoch)"] == "40 x 3072"
    assert cells["fashion", "4x"]["training steps"] == "960"
    assert cells["scenes", "1x"]["base model"] == "?" and cells["scenes", "1x"]["seeds"] == "0, 1, 2"
    assert "![scenes training canvases](preview.png)" in markdown
    assert "No settings were saved for this cell" in section(markdown, "## scenes, 1x schedule")
    key = {r["comparison"]: r for r in first_table(section(markdown, "## fashion, 1x schedule",
                                                           "### Is ELIP worth it? Key comparisons (zero-shot top-1)"))}
    assert key["`elip` minus `stock`"]["half-width ≤ 2"] == "±2 met"
    assert key["`elip` minus `low-res+tune`"]["reference's cost x method's"] == "0.86"
    scenes = first_table(section(markdown, "## scenes, 1x schedule", "### Is ELIP worth it? Key comparisons "
                                                                     "(zero-shot top-1)"))
    assert scenes[0]["half-width ≤ 2"] == "not met" and scenes[0]["verdict"] == "not distinguishable"
    assert "leak" in section(markdown, "## fashion, 1x schedule", "### Does the caption matter, and does it leak?")


def test_the_pruned_column(study):
    out, _, markdown = study
    rows = {r["method"]: r for r in first_table(section(markdown, "## fashion, 1x schedule"))}
    pruned = pd.read_csv(out / "results.csv").query("regime == 'fashion' and schedule == 1 and method == 'elip'")
    expected = report.fmt_interval(report.interval(pruned.zeroshot_top1_pruned))
    assert rows["`elip`"]["zero-shot top-1, scored pruned"] == expected != "-"
    assert rows["`evit`"]["zero-shot top-1, scored pruned"] == rows["`evit`"]["zero-shot top-1, mean ± sd [95% CI]"]
    assert rows["`stock`"]["zero-shot top-1, scored pruned"] == "-"
    assert rows["`tome`"]["runs"] == "0 (1 failed)"


def test_the_schedule_section_flags_moved_verdicts(study):
    _, _, markdown = study
    rows = {(r["regime"], r["comparison"]): r
            for r in first_table(section(markdown, "## Does a longer schedule move the verdicts?"))}
    assert set(rows) == {("fashion", "`elip` minus `stock`"), ("fashion", "`elip scored pruned` minus `elip unpruned`")}
    moved = rows["fashion", "`elip` minus `stock`"]
    assert (moved["1x: verdict"], moved["longer: verdict"]) == ("higher by 1.00 points", "lower by 1.00 points")
    assert moved["longer schedule"] == "4x" and moved["verdict moved?"] == "yes"
    assert rows["fashion", "`elip scored pruned` minus `elip unpruned`"]["verdict moved?"] == "no"


def test_plots_failed_runs_and_written_files(study):
    out, written, markdown = study
    assert [p.name for p in written] == [
        "results.csv", "verdicts.csv", "results.md", "headline.md", "pareto_fashion.png", "pareto_scenes.png",
        "curves_fashion-x1.png", "curves_fashion-x4.png", "curves_scenes-x1.png", "settings.json"]
    for path in written:
        assert path.parent == out and path.exists()
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "pareto.png").exists() and not list(out.glob("*.tmp"))
    failed = first_table(section(markdown, "## Failed runs"))
    assert failed == [{"regime": "fashion", "schedule": "1x", "method": "tome", "seed": "0", "error": "boom"}]
    assert json.loads((out / "settings.json").read_text())["jobs"] == 2


def test_no_runs_is_an_error(tmp_path):
    (tmp_path / "runs" / "stock" / "seed0").mkdir(parents=True)  # the old layout is not read
    (tmp_path / "runs" / "stock" / "seed0" / "result.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        report.collect(tmp_path)


def test_a_record_without_its_cell_is_a_clear_error(tmp_path):
    write_run(tmp_path, "fashion", 1, "stock", 0, {"status": "ok"})
    path = tmp_path / "runs" / "fashion-x1" / "stock" / "seed0" / "result.json"
    path.write_text(json.dumps({"method": "stock", "seed": 0, "status": "ok"}))
    with pytest.raises(ValueError, match="lacks regime, schedule"):
        report.collect(tmp_path)


def test_five_seeds_that_disagree_are_unstable():
    frame = pd.DataFrame({"regime": "scenes", "schedule": 4, "method": "stock", "seed": range(5), "status": "ok",
                          report.TOP1: [38.33, 35.86, 34.74, 31.69, 33.19]})
    lines = report.stability(frame)
    assert lines[0] == "- scenes, 4x: stock zero-shot top-1 mean 34.76, sd 2.54, n = 5; stable: no (sd over 2)."
    assert lines[-1].endswith("not met in scenes 4x.")


def test_the_verdict_column_reads_stock_off_the_ladder_paired_by_seed(study):
    out, _, markdown = study
    verdicts = pd.read_csv(out / "verdicts.csv")
    ladder = verdicts[(verdicts.regime == "fashion") & (verdicts.schedule == 1)
                      & (verdicts.reference == report.EQUAL_FLOPS)].set_index("method")
    # elip costs what stock-matched costs: the ladder's value there is stock-matched's own
    assert ladder["mean"]["elip"] == pytest.approx(np.mean(ELIP_OVER_MATCHED), abs=1e-4)
    # evit (0.75) lies between stock-matched (0.7) and stock (1.0): a sixth of the way, seed by seed
    matched, stock = np.add(STOCK, ELIP_GAIN) - ELIP_OVER_MATCHED, np.array(STOCK)
    diff = np.add(STOCK, ELIP_GAIN) - ELIP_OVER_EVIT - (matched + (stock - matched) * (0.05 / 0.3))
    half = stats.t.ppf(0.975, 4) * diff.std(ddof=1) / math.sqrt(5)
    assert (ladder.loc["evit", "mean"], ladder.loc["evit", "high"]) == pytest.approx((diff.mean(), diff.mean() + half),
                                                                                    abs=1e-4)
    # cheaper than every rung: no reading, said so
    assert ladder.verdict["low-res"] == ladder.verdict["low-res+tune"] == report.OUTSIDE and ladder.n["low-res"] == 0
    verdict_section = section(markdown, "## fashion, 1x schedule",
                              "### Each method against stock at its own training FLOPs, and elip against it "
                              "(zero-shot top-1)")
    rows = {r["method"]: r for r in first_table(verdict_section)}
    assert rows["`evit`"]["`elip` minus it [95% CI]"].startswith(f"{np.mean(ELIP_OVER_EVIT):+.2f}")
    assert rows["`low-res`"]["verdict (Holm)"] == report.OUTSIDE


def test_holm_adjusts_the_key_comparisons_of_a_cell(study):
    adjusted, levels = report.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])
    assert levels[:4] == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])  # the step that kept 0.03, after it
    out, _, _ = study
    verdicts = pd.read_csv(out / "verdicts.csv")
    fashion = verdicts[(verdicts.regime == "fashion") & (verdicts.schedule == 1) & (verdicts.n >= 2)]
    p = np.sort(fashion.p.to_numpy())
    assert fashion.p_holm.max() <= 1 and (fashion.p_holm >= fashion.p - 1e-12).all()
    holm_rejects = np.minimum.accumulate(p <= 0.05 / (len(p) - np.arange(len(p))))
    assert ((fashion.p_holm <= 0.05).sum()) == holm_rejects.sum()
    for row in fashion.itertuples():  # an adjusted interval excludes 0 exactly when Holm rejects, and is wider
        assert (row.low_holm > 0 or row.high_holm < 0) == (row.p_holm <= 0.05)
        assert row.low_holm <= row.low + 1e-9 and row.high_holm >= row.high - 1e-9
    elip = fashion.set_index(["method", "reference"]).loc[("elip", report.EQUAL_FLOPS)]
    diff = np.array(ELIP_OVER_MATCHED)
    frame = report.collect(out)
    rows = report.key_comparisons(frame[(frame.regime == "fashion") & (frame.schedule == 1)])
    unrounded = next(r for r in rows if (r["method"], r["reference"]) == ("elip", report.EQUAL_FLOPS))
    assert unrounded["p"] == pytest.approx(stats.ttest_1samp(diff, 0).pvalue, rel=1e-9)
    assert elip.verdict_holm == "higher by 3.00 points"
    assert fashion.set_index(["method", "reference"]).verdict_holm[("elip", "evit")] == "not distinguishable"


def test_a_run_far_from_its_cells_other_seeds_is_flagged():
    one = pd.Series("a", index=range(5))
    values = pd.Series([70.0, 71.0, 69.5, 70.5, 55.0])
    assert report.far_from_others(values, one, 2.0).tolist() == [False, False, False, False, True]
    assert not report.far_from_others(pd.Series([70.0, 70.0, 71.5]), one[:3], 2.0).any()  # under the floor
    assert not report.far_from_others(pd.Series([70.0, 50.0]), one[:2], 2.0).any()  # one other seed: no median
    # three seeds are enough to see it: the spread is pooled over the cell's methods (the collapsed
    # seed 2); with three, the other extreme is far from the remaining two as well (five seeds tell which)
    cell = pd.Series([68.9, 75.2, 58.6, 70.1, 71.0, 69.5, 73.0, 72.1, 73.9])
    methods = pd.Series(["stock"] * 3 + ["b"] * 3 + ["c"] * 3)
    assert report.far_from_others(cell, methods, 2.0).tolist() == [False, True, True] + [False] * 6
    five = pd.Series([68.9, 72.2, 58.6, 71.0, 72.5, 70.1, 71.0, 69.5, 70.6, 70.8])
    assert report.far_from_others(five, pd.Series(["stock"] * 5 + ["b"] * 5), 2.0).tolist() == [
        False, False, True] + [False] * 7
    frame = pd.DataFrame({"regime": "fashion", "schedule": 1, "method": ["a"] * 4 + ["b"] * 4, "status": "ok",
                          "zeroshot_top1": [70.0, 71.0, 70.5, 70.2, 60.0, 61.0, 60.5, 60.2],
                          "final_train_loss": [3.3, 3.31, 3.29, 3.9, 3.3, 3.31, 3.29, 3.3]})
    assert report.outlier_flags(frame).tolist() == ["", "", "", "loss", "", "", "", ""]  # b's level is no outlier


def test_the_ladder_reads_its_end_rung_just_outside_and_nothing_further():
    frame = pd.DataFrame({"method": ["stock", "stock-0.5", "a", "b"] * 2, "seed": [0] * 4 + [1] * 4, "status": "ok",
                          "train_gflops_per_image": [1.0, 0.5, 0.4999, 0.45] * 2,
                          "zeroshot_top1": [70.0, 60.0, 61.0, 50.0, 72.0, 64.0, 66.0, 50.0]})
    d = report.at_equal_flops(frame, "a")  # 0.02% under the cheapest rung: read there, seed by seed
    assert (d["n"], d["mean"]) == (2, pytest.approx(1.5))
    assert report.at_equal_flops(frame, "b")["n"] == 0  # 10% under: outside the ladder


def test_the_steering_table_gives_each_share_and_the_steering_with_its_interval(study):
    _, _, markdown = study
    text = section(markdown, "## scenes, 1x schedule", "### Does the caption steer the kept tokens onto the item it "
                                                       "names?")
    row = first_table(text)[0]
    assert (row["method"], row["runs"]) == ("`elip`", "3")
    half = stats.t.ppf(0.975, 2) * np.std(STEERING, ddof=1) / math.sqrt(3)
    assert row["steering, points [95% CI]"] == f"+5.00 [{5 - half:+.2f}, {5 + half:+.2f}] (higher by 5.00 points)"
    assert row["kept on the named item, %"].startswith("41.00 ± 1.00")
    assert row["steering per block (2/3)"] == "+6.00 / +4.00"
    assert "No steering diagnostic in this cell" in section(markdown, "## fashion, 1x schedule")


def test_the_report_is_rewritten_from_the_runs_alone(study, capsys):
    from open_clip_elip.study import cli

    out, _, _ = study
    before = {name: (out / name).read_text() for name in ("results.csv", "verdicts.csv", "settings.json")}
    (out / "results.csv").write_text("stale")
    assert cli.main(["--out", str(out), "--report-only"]) == 0
    assert "results.md" in capsys.readouterr().out
    after = {name: (out / name).read_text() for name in before}
    assert after["verdicts.csv"] == before["verdicts.csv"] and after["settings.json"] == before["settings.json"]
    assert after["results.csv"] == before["results.csv"]
    with pytest.raises(SystemExit, match="no .*settings.json; run the study"):
        cli.main(["--out", str(out / "nothing"), "--report-only"])


def test_the_caption_controls_read_the_paired_rows():
    frame = pd.DataFrame({"method": ["elip-text-only"] * 3 + ["elip-vision-only"] * 3, "seed": [0, 1, 2] * 2,
                          "status": "ok", "zeroshot_top1": [61.0, 62.0, 63.5, 60.0, 60.0, 60.0]})
    lines = report.controls(frame)
    assert lines == ["- Does choosing by the caption alone beat choosing by the image alone? `elip-text-only` minus "
                     f"`elip-vision-only`: {report.fmt_diff(report.interval([1.0, 2.0, 3.5]))} points zero-shot "
                     "top-1 (not distinguishable)."]


def test_the_headline_tables_carry_the_reports_adjusted_verdicts(study):
    """headline.md (the README's tables): per cell, each method's accuracy interval and its Holm-adjusted
    comparisons, the same numbers as verdicts.csv and results.csv."""
    out, written, _ = study
    assert out / "headline.md" in written
    text = (out / "headline.md").read_text()
    verdicts = pd.read_csv(out / "verdicts.csv")
    fashion = first_table(text)  # fashion, 1x comes first
    assert "**fashion, 240 steps**" in text and "**fashion, 960 steps**" in text  # 10 (40) epochs of 24 steps
    assert "**scenes, 1x schedule**" in text  # no settings saved: its steps are unknown
    rows = {r["method"]: r for r in fashion}
    elip_evit = verdicts[(verdicts.schedule == 1) & (verdicts.regime == "fashion") & (verdicts.method == "elip")
                         & (verdicts.reference == "evit")].iloc[0]
    assert rows["`evit`"]["`elip` minus it [Holm], verdict"] == (
        f"{elip_evit['mean']:+.1f} [{elip_evit.low_holm:+.1f}, {elip_evit.high_holm:+.1f}] {elip_evit.verdict_holm}")
    assert rows["`stock`"]["minus stock at equal FLOPs [Holm], verdict"] == "(a rung of the ladder)"
    stock = np.array(STOCK)
    half = stats.t.ppf(0.975, 4) * stock.std(ddof=1) / math.sqrt(5)
    assert rows["`stock`"]["zero-shot top-1 [95% CI]"] == f"{stock.mean():.1f} [{stock.mean() - half:.1f}, " \
                                                          f"{stock.mean() + half:.1f}]"
