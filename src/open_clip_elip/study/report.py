"""The study's report from the runs' ``result.json`` and ``curve.csv`` files (``open_clip_elip.study`` writes
them; this module only reads): ``results.csv`` (one row per run), ``verdicts.csv`` (the key comparisons),
``results.md``, ``pareto_<regime>.png`` and ``curves_<cell>.png``.

A cell is one regime (training and evaluation data) at one schedule (a multiple of the samples), named
``<regime>-x<schedule>``; its runs live in ``OUT/runs/<cell>/<method>/seed<k>/``. Statistics are per cell: per
method the mean, standard deviation and 95% confidence interval (Student's t) over seeds; per pair of methods the
same for their paired difference (same seed, same data order). A difference whose interval contains 0 is called
"not distinguishable".

The verdict column reads every method against the stock compute ladder (``methods.LADDER``: the plain model at
several fractions of its training FLOPs): per seed, stock's accuracy at the method's training FLOPs, interpolated
linearly between the two nearest rungs of that seed, is subtracted from the method's; the differences' interval
is the verdict. A cell's key comparisons (that column, ELIP against each reference, ELIP scored pruned) are one
family for Holm's step-down adjustment: the report shows each raw interval and the adjusted one, drawn at the
level Holm's step tests that comparison at, so an adjusted interval excludes 0 exactly when Holm rejects.

A run whose zero-shot top-1 or final training loss lies far from its cell's other seeds of the same method (more
than ``OUTLIER_SDS`` robust standard deviations and more than the floor ``OUTLIER_FLOORS`` from their median; the
robust sd is 1.4826 x the median absolute deviation of the cell's runs from their method's median) is flagged in
``results.csv`` and the report; it stays in the statistics, so the reader sees both.
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from .data import TRAINING
from .methods import LADDER
from .plan import cell_name

TOP1, PRUNED = "zeroshot_top1", "zeroshot_top1_pruned"
METRICS = (TOP1, "zeroshot_top5", PRUNED, "linear_probe_top1")
CELL = ["regime", "schedule"]
RUN = [*CELL, "method", "seed"]  # what names a run: every record the runner writes has these
COLUMNS = [*RUN, "status", TOP1, "zeroshot_top5", PRUNED, "linear_probe_top1",
           "train_gflops_per_image", "step_time_ratio", "train_seconds", "seconds_per_step", "samples_seen",
           "final_train_loss", "flag", "model", "eval_model", "trainer_flags", "wall_seconds", "error"]
REGIMES = ("fashion", "scenes", "custom")  # the report's order; other regimes follow, by name
KEY_METHOD = "elip"
KEY_REFERENCES = ("stock-matched", "flip-budget+tune", "low-res", "low-res+tune", "evit", "tome", "elip-vision-only",
                  "elip-balanced", "elip-text-only", "mask-attentive", "mask-attentive-text", "stock")
EQUAL_FLOPS = "stock at equal FLOPs"  # the reference of the verdict column (read off the ladder)
OUTSIDE = "outside the stock ladder"  # a method cheaper or dearer than every rung of the ladder
LADDER_SLACK = 0.01  # a cost this share beyond the ladder's end rungs reads the end rung
ALPHA = 0.05  # the family-wise error rate of Holm's adjustment, per cell
OUTLIER_SDS = 3.0  # robust sds from the median of the other seeds that flag a run
FINAL_SHARE = 0.1  # the final training loss: mean of the last tenth of the samples' logged losses
PRUNED_REFERENCES = ("evit", "tome")  # reduce tokens at inference too: compared with elip scored pruned
PRUNED_LABEL, UNPRUNED_LABEL = "elip scored pruned", "elip unpruned"
HALF_WIDTH_TARGET = 2.0  # points: the precision each key comparison should reach
OUTLIER_FLOORS = {TOP1: 2 * HALF_WIDTH_TARGET, "final_train_loss": 0.1}  # and at least this far (points, nats)
STABLE_SD, STABLE_SEEDS = 2.0, 5  # a cell is stable when stock's sd is at most this on at least this many seeds
TOO_FEW = "too few seeds to tell"
VERDICT_COLUMNS = [*CELL, "method", "reference", "n", "mean", "low", "high", "half_width", "verdict", "p", "p_holm",
                   "low_holm", "high_holm", "verdict_holm", "cost_ratio"]
SCHEDULE_FILLS = ("full", "none", "left", "bottom", "right", "top")  # pareto markers, by schedule within a regime


def regime_order(regimes: Sequence[str]) -> List[str]:
    present = set(regimes)
    return [r for r in REGIMES if r in present] + sorted(present - set(REGIMES))


def collect(out: Path) -> pd.DataFrame:
    """One row per run (``OUT/runs/<cell>/<method>/seed<k>/result.json``), with ``step_time_ratio``: the run's
    seconds per step over the median of its cell's stock runs."""
    paths = sorted((out / "runs").glob("*-x*/*/seed*/result.json"))
    if not paths:
        raise FileNotFoundError(f"no finished runs under {out / 'runs'}")
    records = [json.loads(p.read_text()) for p in paths]
    for path, record in zip(paths, records):
        missing = [c for c in RUN if c not in record]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: every run record the study writes has them; "
                             "rerun that run (delete its folder and run the study again) or add the fields")
    frame = pd.DataFrame(records)
    frame["final_train_loss"] = [final_loss(path.with_name("curve.csv")) for path in paths]
    for column in COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame["schedule"] = frame.schedule.astype(int)
    stock = frame.seconds_per_step.where((frame.status == "ok") & (frame.method == "stock"))
    frame["step_time_ratio"] = frame.seconds_per_step / stock.groupby([frame.regime, frame.schedule]).transform(
        "median")
    frame["flag"] = outlier_flags(frame)
    extra = sorted(c for c in frame.columns if c not in COLUMNS and c != "resume_from")
    rank = {regime: i for i, regime in enumerate(regime_order(frame.regime))}
    return frame[COLUMNS + extra].sort_values(
        RUN, key=lambda c: c.map(rank) if c.name == "regime" else c).reset_index(drop=True)


def final_loss(curve: Path) -> float:
    """Mean logged training loss over the last ``FINAL_SHARE`` of a run's samples (NaN without a curve)."""
    if not curve.exists():
        return math.nan
    rows = pd.read_csv(curve)
    return float(rows.loss[rows.samples >= (1 - FINAL_SHARE) * rows.samples.max()].mean()) if len(rows) else math.nan


def far_from_others(values: pd.Series, groups: pd.Series, floor: float) -> pd.Series:
    """Per value: further from the median of the OTHER values of its group (its method's other seeds) than
    ``OUTLIER_SDS`` robust sds and than ``floor``. The robust sd is pooled over the groups (one cell's methods):
    1.4826 x the median absolute deviation of every value from its group's median, so that three seeds of a method
    are enough. False with fewer than two others, or when unknown."""
    deviation = (values - values.groupby(groups).transform("median")).abs()
    robust_sd = 1.4826 * deviation.median()
    flags = pd.Series(False, index=values.index)
    for index, value in values.items():
        others = values[(groups == groups[index]) & (values.index != index)].dropna()
        if len(others) < 2 or pd.isna(value):
            continue
        gap = abs(value - others.median())
        flags[index] = gap > floor and gap > OUTLIER_SDS * robust_sd
    return flags


def outlier_flags(frame: pd.DataFrame) -> pd.Series:
    """Per run, what lies far from the other seeds of its method in its cell (``far_from_others``, the robust sd
    pooled over the cell's methods): ``top-1``, ``loss``, both (``top-1, loss``) or nothing (empty)."""
    ok = frame[frame.status == "ok"]
    names = {TOP1: "top-1", "final_train_loss": "loss"}
    parts = pd.DataFrame(False, index=frame.index, columns=list(names.values()))
    for _, cell in ok.groupby(["regime", "schedule"]):
        for column, floor in OUTLIER_FLOORS.items():
            parts.loc[cell.index, names[column]] = far_from_others(cell[column], cell.method, floor)
    return parts.apply(lambda row: ", ".join(name for name in names.values() if row[name]), axis=1)


def cell_frames(frame: pd.DataFrame) -> Iterator[Tuple[str, int, pd.DataFrame]]:
    """``(regime, schedule, rows)`` of each cell, regimes in ``REGIMES`` order, then schedules ascending."""
    for regime in regime_order(frame.regime):
        rows = frame[frame.regime == regime]
        for schedule in sorted(set(rows.schedule)):
            yield regime, int(schedule), rows[rows.schedule == schedule]


def interval(values: Sequence[float]) -> dict:
    """Mean, standard deviation and 95% confidence interval (t distribution) of ``values``."""
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    n = len(values)
    mean = values.mean() if n else math.nan
    sd = values.std(ddof=1) if n > 1 else math.nan
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired(frame: pd.DataFrame, method: str, reference: str, metric: str,
           reference_metric: Optional[str] = None) -> dict:
    """``interval`` of ``method``'s ``metric`` minus ``reference``'s ``reference_metric`` (default: ``metric``)
    over the seeds both finished; ``frame`` holds one cell's runs."""
    ok = frame[frame.status == "ok"]
    a = ok[ok.method == method].set_index("seed")[metric]
    b = ok[ok.method == reference].set_index("seed")[reference_metric or metric]
    seeds = a.index.intersection(b.index)
    return interval((a[seeds] - b[seeds]).tolist())


def at_equal_flops(frame: pd.DataFrame, method: str, metric: str = TOP1) -> dict:
    """``interval`` of ``method``'s ``metric`` minus stock's at the same training FLOPs per image, read off the
    ladder (``LADDER``) of the same seed: linear in FLOPs between the two nearest rungs. A cost within
    ``LADDER_SLACK`` outside the end rungs reads the end rung (whole batches make stock-matched's cost differ from
    elip's by about 0.1%); seeds whose method cost lies further outside (or with fewer than two rungs) are left
    out. ``frame``: one cell's runs."""
    ok = frame[frame.status == "ok"]
    rungs = ok[ok.method.isin(LADDER)]
    differences = []
    for seed, run in ok[ok.method == method].set_index("seed").iterrows():
        ladder = rungs[rungs.seed == seed].sort_values("train_gflops_per_image")
        flops, accuracy = ladder.train_gflops_per_image.to_numpy(float), ladder[metric].to_numpy(float)
        cost = float(run.train_gflops_per_image)
        if len(ladder) >= 2 and flops[0] * (1 - LADDER_SLACK) <= cost <= flops[-1] * (1 + LADDER_SLACK):
            differences.append(float(run[metric]) - float(np.interp(cost, flops, accuracy)))  # clipped to the ends
    return interval(differences)


def p_value(d: dict) -> float:
    """Two-sided p-value of the paired t-test behind ``interval`` ``d`` (NaN with fewer than two seeds)."""
    n, sd = d["n"], d["sd"]
    if n < 2 or pd.isna(sd):
        return math.nan
    if sd == 0:
        return 0.0 if d["mean"] != 0 else 1.0
    return float(2 * stats.t.sf(abs(d["mean"]) / (sd / math.sqrt(n)), n - 1))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> Tuple[List[float], List[float]]:
    """Holm's step-down adjustment of one family: the adjusted p-values, and per hypothesis the two-sided level
    its adjusted interval is drawn at: ``alpha / (m - i)`` at (0-based) rank i up to the first hypothesis Holm
    keeps, that one's level for every later rank, so an adjusted interval excludes 0 exactly when Holm rejects.
    NaN p-values are outside the family (NaN out)."""
    tested = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    m = len(tested)
    adjusted, levels = [math.nan] * len(p_values), [math.nan] * len(p_values)
    running, kept_level = 0.0, None
    for rank, i in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
        level = alpha / (m - rank)
        if kept_level is None and p_values[i] > level:
            kept_level = level
        levels[i] = kept_level if kept_level is not None else level
    return adjusted, levels


def at_level(d: dict, level: float) -> Tuple[float, float]:
    """``d``'s interval at two-sided level ``level`` (t distribution) instead of 0.05."""
    if d["n"] < 2 or math.isnan(level):
        return math.nan, math.nan
    half = stats.t.ppf(1 - level / 2, d["n"] - 1) * d["sd"] / math.sqrt(d["n"])
    return d["mean"] - half, d["mean"] + half


def verdict(diff: dict, unit: str = "points") -> str:
    if diff["n"] < 2 or math.isnan(diff["low"]):
        return TOO_FEW
    if diff["low"] > 0:
        return f"higher by {diff['mean']:.2f} {unit}"
    if diff["high"] < 0:
        return f"lower by {-diff['mean']:.2f} {unit}"
    return "not distinguishable"


def moved(before: str, after: str) -> str:
    """``yes`` when two verdicts differ in kind (higher, lower, not distinguishable); ``-`` if one cannot tell."""
    if TOO_FEW in (before, after):
        return "-"
    return "yes" if before.split(" by ")[0] != after.split(" by ")[0] else "no"


def fmt_interval(s: dict, digits: int = 2) -> str:
    if s["n"] == 0:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (1 run)"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def fmt_diff(s: dict, digits: int = 2) -> str:
    if s["n"] < 2:
        return "-" if s["n"] == 0 else f"{s['mean']:+.{digits}f} (1 seed)"
    return f"{s['mean']:+.{digits}f} [{s['low']:+.{digits}f}, {s['high']:+.{digits}f}]"


def num(value, digits: int = 2) -> str:
    """``value`` to ``digits`` decimals, ``-`` when unknown (None or NaN)."""
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def method_order(frame: pd.DataFrame, methods: Dict[str, str]) -> List[str]:
    present = set(frame.method)
    return [m for m in methods if m in present] + sorted(present - set(methods))


def summary(frame: pd.DataFrame, methods: Dict[str, str]) -> pd.DataFrame:
    """Per method of one cell's runs: runs, and mean/sd/CI of each metric, cost and time."""
    ok = frame[frame.status == "ok"]
    rows = []
    for method in method_order(frame, methods):
        runs = ok[ok.method == method]
        row = {"method": method, "runs_ok": len(runs), "runs_failed": int((frame[frame.method == method].status
                                                                            != "ok").sum())}
        for metric in METRICS:
            for key, value in interval(runs[metric]).items():
                row[f"{metric}_{key}"] = value
        row["train_gflops_per_image"] = runs.train_gflops_per_image.mean() if len(runs) else math.nan
        row["step_time_ratio"] = runs.step_time_ratio.median() if len(runs) else math.nan
        row["train_seconds"] = runs.train_seconds.median() if len(runs) else math.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def key_comparisons(frame: pd.DataFrame) -> List[dict]:
    """One cell's key comparisons of zero-shot top-1: every method but the ladder's rungs against stock at its
    own training FLOPs (``at_equal_flops``: the verdict column); elip minus each of ``KEY_REFERENCES`` present
    (but the ladder's cheaper rungs when elip's verdict-column row reads them);
    elip scored pruned minus elip unpruned (same checkpoint) and minus each of ``PRUNED_REFERENCES`` present
    (pruned against pruned). With the CI half-width, the raw verdict, the p-value, Holm's adjusted p-value,
    interval and verdict over these rows (``holm``), and the reference's training FLOPs over the method's."""
    ok = frame[frame.status == "ok"]
    present = set(ok.method)
    flops = ok.groupby("method").train_gflops_per_image.mean()
    rows = []

    def add(label, reference_label, d, cost_ratio, outside=False):
        rows.append({"method": label, "reference": reference_label, "d": d, "cost_ratio": cost_ratio,
                     "verdict": OUTSIDE if outside else verdict(d)})

    if len(present & set(LADDER)) >= 2:  # a ladder: at least two rungs
        for method in [m for m in dict.fromkeys(ok.method) if m not in LADDER]:
            d = at_equal_flops(frame, method)
            add(method, EQUAL_FLOPS, d, 1.0, outside=d["n"] == 0)
    on_ladder = {r["method"] for r in rows if r["d"]["n"]}
    if KEY_METHOD in present:  # a rung that the verdict column reads already is not counted twice
        for ref in (r for r in KEY_REFERENCES if r in present and not (r in LADDER[1:] and KEY_METHOD in on_ladder)):
            add(KEY_METHOD, ref, paired(frame, KEY_METHOD, ref, TOP1), flops[ref] / flops[KEY_METHOD])
        add(PRUNED_LABEL, UNPRUNED_LABEL, paired(frame, KEY_METHOD, KEY_METHOD, PRUNED, TOP1), 1.0)
        for ref in (r for r in PRUNED_REFERENCES if r in present):
            add(PRUNED_LABEL, ref, paired(frame, KEY_METHOD, ref, PRUNED, PRUNED), flops[ref] / flops[KEY_METHOD])
    p = [p_value(r["d"]) for r in rows]
    adjusted, levels = holm(p)
    out = []
    for row, p_raw, p_adj, level in zip(rows, p, adjusted, levels):
        d = row.pop("d")
        low, high = at_level(d, level)
        adjusted_d = {**d, "low": low, "high": high}
        out.append({**row, "n": d["n"], "mean": d["mean"], "low": d["low"], "high": d["high"],
                    "half_width": d["high"] - d["mean"], "p": p_raw, "p_holm": p_adj, "low_holm": low,
                    "high_holm": high,
                    "verdict_holm": row["verdict"] if row["verdict"] == OUTSIDE else verdict(adjusted_d)})
    return out


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The key comparisons of every cell, one row each (``VERDICT_COLUMNS``)."""
    return pd.DataFrame([{"regime": regime, "schedule": schedule, **row}
                         for regime, schedule, rows in cell_frames(frame) for row in key_comparisons(rows)],
                        columns=VERDICT_COLUMNS)


def leak_section(frame: pd.DataFrame, methods: Dict[str, str]) -> str:
    ok = frame[(frame.status == "ok") & frame.get("leak_top1", pd.Series(dtype=float)).notna()]
    if ok.empty:
        return "No leak diagnostic was run (no ELIP-family runs, or no held-out pairs).\n"
    blocks = sorted({c.rsplit("_b", 1)[1] for c in ok.columns if c.startswith("leak_overlap_own_shuffled_b")})
    rows = []
    for method in method_order(ok, methods):
        runs = ok[ok.method == method]
        row = [method, len(runs),
               fmt_interval(interval(runs.leak_top1_own)), fmt_interval(interval(runs.leak_top1_unguided)),
               fmt_interval(interval(runs.leak_top1)),
               fmt_interval(interval(runs.leak_top1_own - runs.leak_top1_shuffled)),
               fmt_interval(interval(runs.leak_loss), 3)]
        row += ["/".join(f"{runs[f'leak_overlap_own_shuffled_b{b}'].mean():.1f}" for b in blocks),
                "/".join(f"{runs[f'leak_overlap_own_vision_b{b}'].mean():.1f}" for b in blocks),
                f"{runs.leak_norm_text_term.mean():.2f} / {runs.leak_norm_cls_term.mean():.2f}"]
        rows.append(row)
    roman = "/".join(["II", "III", "IV", "V", "VI"][int(b) - 2] for b in blocks)
    return table(["method", "runs", "retrieval top-1, own caption", "retrieval top-1, unguided",
                  "top-1 gap own - unguided", "top-1 gap own - shuffled", "loss gap unguided - own",
                  f"kept overlap own vs shuffled, % ({roman})", f"kept overlap own vs vision-only, % ({roman})",
                  "norm of text term / CLS term"], rows)


def steering_section(frame: pd.DataFrame, methods: Dict[str, str]) -> str:
    """Per method with the steering diagnostic (``open_clip_elip.steering``, ``steer_*`` columns): the kept patch
    tokens' shares on the named item, the other item and background, and the steering, each with its 95% CI over
    seeds (mean over pruned blocks), then the steering per block."""
    column = "steer_steering"
    ok = frame[(frame.status == "ok") & frame.get(column, pd.Series(dtype=float)).notna()]
    if ok.empty:
        return ("No steering diagnostic in this cell (it runs on ELIP-family and -mask checkpoints of the scenes "
                "regime; evit, tome and the other families do not report which patches they keep).\n")
    blocks = sorted({int(c.rsplit("_b", 1)[1]) for c in ok.columns if c.startswith("steer_steering_b")})
    rows = []
    for method in method_order(ok, methods):
        runs = ok[ok.method == method]
        rows.append([f"`{method}`", len(runs),
                     *(fmt_interval(interval(runs[f"steer_kept_{r}"])) for r in ("named", "other", "background")),
                     fmt_diff(interval(runs[column])) + f" ({verdict(interval(runs[column]))})",
                     " / ".join("-" if pd.isna(v) else f"{v:+.2f}"
                                for v in (runs[f"steer_steering_b{b}"].mean() for b in blocks))])
    return ("Held-out two-item canvases, each guided once by a caption naming its first item and once by the same "
            "template naming its second. Shares: % of the kept patch tokens whose centre lies on the item the "
            "caption names, on the other item, on the background (mean over both captions and the pruned blocks). "
            "Steering: how far the kept share moves toward whichever item the caption names, in points; exactly 0 "
            "for a selection that does not read the caption.\n\n"
            + table(["method", "runs", "kept on the named item, %", "on the other item, %", "on background, %",
                     "steering, points [95% CI]", f"steering per block ({'/'.join(str(b) for b in blocks)})"], rows))


def controls(frame: pd.DataFrame) -> List[str]:
    """The caption questions, answered from the paired differences (zero-shot top-1)."""
    lines, present = [], set(frame[frame.status == "ok"].method)

    def say(method, reference, question):
        if {method, reference} <= present:
            d = paired(frame, method, reference, TOP1)
            lines.append(f"- {question} `{method}` minus `{reference}`: {fmt_diff(d)} points zero-shot top-1 "
                         f"({verdict(d)}).")

    say("elip", "elip-vision-only", "Does the paired caption beat vision-only scoring at equal cost?")
    say("elip-random-caption", "elip", "Does another row's caption beat the paired one?")
    say("elip-balanced", "elip", "Does the norm-matched fusion change the accuracy?")
    say("elip-text-only", "elip-vision-only", "Does choosing by the caption alone beat choosing by the image alone?")
    ok = frame[(frame.status == "ok") & (frame.method == "elip")]
    if "leak_top1" in ok and ok.leak_top1.notna().any():
        top1, loss = interval(ok.leak_top1), interval(ok.leak_loss)
        caption = interval(ok.leak_top1_own - ok.leak_top1_shuffled)
        lines.append(f"- How large is the leak (elip, held-out pairs)? Retrieval top-1 gap own minus unguided "
                     f"{fmt_diff(top1)} points ({verdict(top1)}), contrastive-loss gap unguided minus own "
                     f"{fmt_diff(loss, 3)} ({verdict(loss, 'nats')}); own minus shuffled captions, which leaves "
                     f"out what pruning itself changes, {fmt_diff(caption)} points ({verdict(caption)}).")
    for method in ("elip", "elip-balanced"):
        runs = frame[(frame.status == "ok") & (frame.method == method)]
        cols = sorted(c for c in runs.columns if c.startswith("leak_overlap_own_shuffled_b"))
        if len(runs) and cols and runs[cols].notna().all().all():
            overlap = "/".join(f"{runs[c].mean():.1f}" for c in cols)
            lines.append(f"- `{method}` keeps {overlap}% of the same tokens (blocks II onwards) under shuffled "
                         f"captions as under its own: the lower, the more the caption steers the selection.")
    return lines or ["No caption control ran in this cell."]


def cell_settings(settings: dict, regime: str, schedule: int) -> dict:
    """The settings of one cell (empty when none were saved)."""
    return settings.get("cells", {}).get(cell_name(regime, schedule), {})


def schedule_size(preset: dict) -> Tuple[str, str]:
    """``epochs x samples per epoch`` and the training steps of ``preset``; ``?`` where it is unknown."""
    if not {"epochs", "samples_per_epoch", "batch_size"} <= preset.keys():
        return "?", "?"
    steps = preset["epochs"] * math.ceil(preset["samples_per_epoch"] / preset["batch_size"])
    return f"{preset['epochs']} x {preset['samples_per_epoch']}", str(steps)


def cells_table(frame: pd.DataFrame, settings: dict) -> str:
    rows = []
    for regime, schedule, runs in cell_frames(frame):
        info = cell_settings(settings, regime, schedule)
        preset = info.get("preset_values", {})
        samples, steps = schedule_size(preset)
        rows.append([regime, f"{schedule}x", info.get("base_model", "?"), info.get("image_size", "?"), samples,
                     preset.get("batch_size", "?"), steps,
                     f"`{info.get('eval_dataset', '?')}`: {preset.get('test_samples', '?')} zero-shot, "
                     f"{preset.get('probe_samples', '?')} probe", ", ".join(str(s) for s in sorted(set(runs.seed))),
                     training_text(settings, info)])
    return table(["regime", "schedule", "base model", "image px", "samples (epochs x per epoch)", "batch",
                  "training steps", "evaluation set and samples", "seeds", "lr, warm-up share, grad clip"], rows)


def training_text(settings: dict, info: dict) -> str:
    """A cell's trainer settings (saved per cell; a study saved before that: the command line's, the defaults)."""
    training = info.get("training") or {**TRAINING, **{k: settings[k] for k in TRAINING if settings.get(k)}}
    return f"{training['lr']:g}, {training['warmup']:g}, {training['grad_clip_norm'] or 'none'}"


def stability(frame: pd.DataFrame) -> List[str]:
    """Per cell, stock's zero-shot top-1 over seeds and whether it is stable (``STABLE_SD``, ``STABLE_SEEDS``)."""
    lines, unstable = [], []
    for regime, schedule, rows in cell_frames(frame):
        s = interval(rows[(rows.status == "ok") & (rows.method == "stock")][TOP1])
        if s["n"] < STABLE_SEEDS:
            verdict = f"not yet ({s['n']} of {STABLE_SEEDS} seeds)"
        else:
            verdict = "yes" if s["sd"] <= STABLE_SD else f"no (sd over {STABLE_SD:g})"
        if verdict != "yes":
            unstable.append(f"{regime} {schedule}x")
        lines.append(f"- {regime}, {schedule}x: stock zero-shot top-1 mean {num(s['mean'])}, sd {num(s['sd'])}, "
                     f"n = {s['n']}; stable: {verdict}.")
    lines.append(f"\nStock's sd at most {STABLE_SD:g} points on at least {STABLE_SEEDS} seeds: "
                 + (f"not met in {', '.join(unstable)}." if unstable else "met in every cell."))
    return lines


def accuracy_table(frame: pd.DataFrame, methods: Dict[str, str]) -> str:
    s = summary(frame, methods)
    stock_flops = s.train_gflops_per_image.get("stock", math.nan)
    rows = []
    for method, row in s.iterrows():
        get = {m: {k: row[f"{m}_{k}"] for k in ("n", "mean", "sd", "low", "high")} for m in METRICS}
        flagged = int(frame[(frame.method == method) & (frame.status == "ok")].flag.fillna("").astype(bool).sum())
        runs = f"{int(row.runs_ok)}" + (f" ({int(row.runs_failed)} failed)" if row.runs_failed else "") + (
            f" ({flagged} flagged)" if flagged else "")
        rows.append([f"`{method}`", runs, *(fmt_interval(get[m]) for m in METRICS),
                     num(row.train_gflops_per_image, 4), num(row.train_gflops_per_image / stock_flops, 3),
                     num(row.step_time_ratio), num(row.train_seconds, 0)])
    return table(["method", "runs", "zero-shot top-1, mean ± sd [95% CI]", "zero-shot top-5",
                  "zero-shot top-1, scored pruned", "linear probe top-1", "train GFLOPs / image", "x stock",
                  "step time x stock", "train s (median)"], rows)


def fmt_adjusted(r: dict, digits: int = 2) -> str:
    """A key comparison's Holm-adjusted interval (``-`` where it has none)."""
    if r["n"] < 2 or pd.isna(r["low_holm"]):
        return "-"
    return f"{r['mean']:+.{digits}f} [{r['low_holm']:+.{digits}f}, {r['high_holm']:+.{digits}f}]"


def comparisons_table(rows: List[dict]) -> str:
    if not rows:
        return "No `elip` runs and no stock ladder in this cell.\n"
    met = {True: "±2 met", False: "not met"}
    return table(["comparison", "seeds", "difference, points [95% CI]", "CI half-width",
                  f"half-width ≤ {HALF_WIDTH_TARGET:g}", "verdict", "p", "Holm: adjusted p",
                  "Holm: adjusted interval", "Holm: verdict", "reference's cost x method's"],
                 [[f"`{r['method']}` minus `{r['reference']}`", r["n"], fmt_diff(r), num(r["half_width"]),
                   "-" if pd.isna(r["half_width"]) else met[r["half_width"] <= HALF_WIDTH_TARGET], r["verdict"],
                   num(r["p"], 4), num(r["p_holm"], 4), fmt_adjusted(r), r["verdict_holm"], num(r["cost_ratio"])]
                  for r in rows])


def against_stock_and_elip(rows: List[dict]) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    """A cell's key comparisons as ``{method: its row against stock at equal FLOPs}`` and ``{method: elip's row
    against it}``."""
    return ({r["method"]: r for r in rows if r["reference"] == EQUAL_FLOPS},
            {r["reference"]: r for r in rows if r["method"] == KEY_METHOD})


def verdict_column(rows: List[dict]) -> str:
    """Per method: against stock at its own training FLOPs (the verdict), and elip against it beside it, each raw
    and Holm-adjusted."""
    ladder, elip = against_stock_and_elip(rows)
    if not ladder:
        return "No stock ladder (two rungs or more) in this cell: no method is read against stock at equal compute.\n"
    cells = []
    for r in ladder.values():
        e = elip.get(r["method"])
        cells.append([f"`{r['method']}`", fmt_diff(r), fmt_adjusted(r), r["verdict_holm"],
                      *((fmt_diff(e), fmt_adjusted(e), e["verdict_holm"]) if e else ("-",) * 3)])
    return table(["method", "minus stock at equal FLOPs [95% CI]", "Holm-adjusted", "verdict (Holm)",
                  f"`{KEY_METHOD}` minus it [95% CI]", f"`{KEY_METHOD}` minus it, Holm-adjusted",
                  f"`{KEY_METHOD}`'s verdict (Holm)"], cells)


def headline(frame: pd.DataFrame, settings: dict, methods: Dict[str, str]) -> str:
    """The verdict table of every cell as the project README shows it (``headline.md``): per method its cost,
    accuracy, and its verdict against stock at equal FLOPs and elip's against it, each with its Holm-adjusted
    interval."""
    parts = []
    for regime, schedule, rows in cell_frames(frame):
        s, comparisons = summary(rows, methods), key_comparisons(rows)
        ladder, elip = against_stock_and_elip(comparisons)
        steps = schedule_size(cell_settings(settings, regime, schedule).get("preset_values", {}))[1]
        stock_flops = s.train_gflops_per_image.get("stock", math.nan)

        def judged(r):
            if r is None:
                return "-"
            adjusted = fmt_adjusted(r, 1)
            return r["verdict_holm"] if adjusted == "-" else f"{adjusted} {r['verdict_holm']}"

        def accuracy(row):
            n, mean, low, high = (row[f"{TOP1}_{k}"] for k in ("n", "mean", "low", "high"))
            return num(mean, 1) if n < 2 else f"{mean:.1f} [{low:.1f}, {high:.1f}]"

        body = [[f"`{method}`", int(row.runs_ok), num(row.train_gflops_per_image / stock_flops), accuracy(row),
                 "(a rung of the ladder)" if method in LADDER else judged(ladder.get(method)),
                 judged(elip.get(method))] for method, row in s.iterrows()]
        length = f"{schedule}x schedule" if steps == "?" else f"{steps} steps"
        parts += [f"**{regime}, {length}** (zero-shot top-1, %; intervals 95%, differences paired by seed, "
                  f"Holm-adjusted over the cell's {len(comparisons)} key comparisons):\n",
                  table(["method", "seeds", "training FLOPs x stock", "zero-shot top-1 [95% CI]",
                         "minus stock at equal FLOPs [Holm], verdict", f"`{KEY_METHOD}` minus it [Holm], verdict"],
                        body)]
    return "\n".join(parts)


def flagged_runs(frame: pd.DataFrame) -> str:
    """The cell's runs far from their method's other seeds (``outlier_flags``)."""
    flagged = frame[(frame.status == "ok") & frame.flag.fillna("").astype(bool)]
    rule = (f"more than {OUTLIER_SDS:g} robust sds (1.4826 x the median absolute deviation of the cell's runs from "
            f"their method's median) and more than "
            f"{OUTLIER_FLOORS[TOP1]:g} points of top-1 or {OUTLIER_FLOORS['final_train_loss']:g} nats of final "
            "training loss from the median of the method's other seeds in this cell")
    if flagged.empty:
        return f"No run lies far from its method's other seeds ({rule}).\n"
    return (f"These runs lie far from their method's other seeds ({rule}); they stay in the statistics above:\n\n"
            + table(["method", "seed", "far in", "zero-shot top-1", "final training loss"],
                    [[f"`{r.method}`", r.seed, r.flag, num(r.zeroshot_top1), num(r.final_train_loss, 3)]
                     for r in flagged.itertuples()]))


def paired_table(frame: pd.DataFrame, methods: Dict[str, str]) -> str:
    rows = []
    for method in method_order(frame, methods):
        cells = [f"`{method}`"]
        for reference in ("stock", "stock-matched"):
            for metric in (TOP1, "linear_probe_top1"):
                d = paired(frame, method, reference, metric) if method != reference else {"n": 0}
                cells.append(fmt_diff(d) + (f" ({verdict(d)})" if d["n"] > 1 else ""))
        rows.append(cells)
    return table(["method", "zero-shot vs stock", "linear probe vs stock", "zero-shot vs stock-matched",
                  "linear probe vs stock-matched"], rows)


def cell_intro(info: dict) -> str:
    """A cell's data and budgets, from its settings."""
    if not info:
        return "No settings were saved for this cell: what follows comes from its runs only.\n"
    return (f"{info['regime_description']}. Training data `{info['train_data']}`, evaluation "
            f"`{info['eval_dataset']}`. `stock-matched` trains on {info['stock_matched_fraction']:.3f}x the samples "
            f"(elip's training FLOPs); `flip-budget` drops {info['flip_budget_drop']:.3f} of the patches; `low-res` "
            f"trains at {info['low_res_size']} px.\n")


def cell_section(regime: str, schedule: int, frame: pd.DataFrame, settings: dict, methods: Dict[str, str]) -> List[str]:
    """The section of one cell: its setup, accuracy and cost, the verdict column, key comparisons, flagged runs,
    paired differences, controls."""
    comparisons = key_comparisons(frame)
    return [
        f"## {regime}, {schedule}x schedule\n",
        cell_intro(cell_settings(settings, regime, schedule)),
        "### Accuracy and cost per method\n",
        accuracy_table(frame, methods),
        "### Each method against stock at its own training FLOPs, and elip against it (zero-shot top-1)\n",
        "Stock's accuracy at a method's training FLOPs is read off the stock ladder "
        f"({', '.join(f'`{m}`' for m in LADDER)}), interpolated between the two nearest rungs of the same seed. "
        f"Adjusted intervals: Holm's step-down over this cell's key comparisons (family-wise {ALPHA:g}).\n",
        verdict_column(comparisons),
        "### Is ELIP worth it? Key comparisons (zero-shot top-1)\n",
        comparisons_table(comparisons),
        "### Runs far from their method's other seeds\n",
        flagged_runs(frame),
        "### Paired differences (points)\n",
        paired_table(frame, methods),
        "### Does the caption matter, and does it leak?\n",
        *controls(frame), "",
        leak_section(frame, methods),
        "### Does the caption steer the kept tokens onto the item it names?\n",
        steering_section(frame, methods),
    ]


def schedule_section(verdicts: pd.DataFrame) -> str:
    """Each regime's key comparisons at 1x next to those at each longer schedule, and whether the verdict moved."""
    rows = []
    for regime, group in verdicts.groupby("regime", sort=False):
        base = group[group.schedule == 1].set_index(["method", "reference"])
        for schedule in sorted(set(group.schedule) - {1}):
            longer = group[group.schedule == schedule].set_index(["method", "reference"])
            for key in base.index.intersection(longer.index):
                a, b = base.loc[key], longer.loc[key]
                rows.append([regime, f"`{key[0]}` minus `{key[1]}`", fmt_diff(a), a.verdict, f"{schedule}x",
                             fmt_diff(b), b.verdict, moved(a.verdict, b.verdict)])
    if not rows:
        return "No regime was run at 1x and at a longer schedule.\n"
    return table(["regime", "comparison", "1x: difference [95% CI]", "1x: verdict", "longer schedule",
                  "longer: difference [95% CI]", "longer: verdict", "verdict moved?"], rows)


def report_markdown(frame: pd.DataFrame, settings: dict, methods: Dict[str, str]) -> str:
    command = settings.get("command_line", "")
    lines = [
        "# The study: ELIP against the token-reduction choices of OpenCLIP\n",
        f"Made by `{('python -m open_clip_elip.study ' + command).rstrip()}`"
        f"{'' if command else ' (the default preset)'} on {time.strftime('%Y-%m-%d')}, {platform.machine()}, CPU "
        f"only, {settings.get('threads', '?')} thread(s) per run, {settings.get('jobs', '?')} run(s) at a time; "
        "every model trained by OpenCLIP's own trainer and evaluated by clip_benchmark "
        f"({'zero-shot and linear probe' if frame.linear_probe_top1.notna().any() else 'zero-shot'}).\n",
        "## Cells\n",
        "A cell is one regime (training and evaluation data) at one schedule (a multiple of the samples):\n",
        cells_table(frame, settings),
    ]
    if settings.get("preview"):
        lines.append(f"The scenes regime's training canvases, a sample:\n\n![scenes training canvases]"
                     f"({settings['preview']})\n")
    lines += [
        "Every interval is a 95% confidence interval over seeds (t distribution); differences are paired by seed "
        "(same initialisation seed and data order) within a cell. `train GFLOPs / image`: training FLOPs of both "
        "towers per image of the full schedule, from the token counts (the benchmark's cost model); step time: the "
        "trainer's median seconds per step over the median of the cell's stock runs, measured with other runs "
        f"sharing the machine. A key comparison meets the precision target when its CI half-width is at most "
        f"{HALF_WIDTH_TARGET:g} points; `verdicts.csv` holds them all.\n",
        "The leak diagnostic (`python -m open_clip_elip.leak`) encodes held-out image-caption pairs three ways with "
        "the same checkpoint: unguided (as every evaluation does), guided by their own captions, and guided by "
        "shuffled captions, and measures in-batch image-to-text retrieval and the contrastive loss. A gap between "
        "own and unguided is information about the caption that the token selection passes into the image "
        "embedding, plus whatever pruning itself changes (it is there even when the caption plays no part, e.g. "
        "`elip-vision-only`); the gap between own and shuffled captions is the caption's own part. Training losses "
        "of guided models include both.\n",
        "## Stability: stock's spread over seeds\n",
        *stability(frame), "",
    ]
    for regime, schedule, rows in cell_frames(frame):
        lines += cell_section(regime, schedule, rows, settings, methods)
    lines += ["## Does a longer schedule move the verdicts?\n", schedule_section(verdict_table(frame))]
    lines += [
        "## Caveats\n",
        "- Scale: small ViTs on small datasets; the paper trained ViT-S/16 and ViT-B/16 on millions of web "
        "captions. What holds here may not hold there.",
        "- Step times are the trainer's own, measured while other runs (and anything else on the machine) shared "
        "the cores; use them as rough ratios. The benchmark (`python -m open_clip_elip.bench`) measures speed "
        "properly; GFLOPs come from token counts and do not depend on the machine.",
        "- `zero-shot top-1` scores the ELIP family unpruned (no caption at inference: the stock model with the "
        "same weights); `scored pruned` scores the same checkpoint with token reduction at inference (no caption); "
        "`evit` and `tome` always reduce, so their two columns agree. `low-res` is evaluated at its own, lower "
        "image size, `low-res+tune` at the full size; patch dropout is off at evaluation.",
        "- Accuracies are reproducible for a given seed on one machine (fixed threads, seeded data order); other "
        "CPUs or thread counts can change the last digits and, through them, a run's trajectory.",
        "",
    ]
    failed = frame[frame.status != "ok"]
    if len(failed):
        lines.append("## Failed runs\n")
        lines.append(table(["regime", "schedule", "method", "seed", "error"],
                           [[r.regime, f"{r.schedule}x", r.method, r.seed, str(r.error).splitlines()[0][:200]]
                            for r in failed.itertuples()]))
    lines.append("## Methods\n")
    lines += [f"- `{m}`: {methods.get(m, '')}" for m in method_order(frame, methods)] + [""]
    return "\n".join(lines)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(points: pd.DataFrame, path: Path, title: str) -> None:
    """Zero-shot top-1 (mean, 95% CI) against training GFLOPs per image, one marker per method and schedule
    (``points``: ``summary`` rows with a ``schedule`` column; schedules differ by marker fill), the stock ladder's
    rungs joined by a line per schedule."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    points = points[points.zeroshot_top1_n > 0].reset_index()
    schedules = sorted(set(points.schedule))
    span = (points.train_gflops_per_image.max() - points.train_gflops_per_image.min()) or 1.0
    cost = points.train_gflops_per_image.round(6)
    rank, count = points.groupby(cost).cumcount(), points.groupby(cost).train_gflops_per_image.transform("size")
    cmap = plt.get_cmap("tab20")
    colours = {method: cmap(i % 20) for i, method in enumerate(dict.fromkeys(points.method))}
    for row in points.itertuples():  # points of equal cost are spread apart a little
        x = row.train_gflops_per_image + (rank[row.Index] - (count[row.Index] - 1) / 2) * 0.01 * span
        err = (row.zeroshot_top1_high - row.zeroshot_top1_mean) if row.zeroshot_top1_n > 1 else 0
        marker = "o" if row.method.startswith("elip") else "s" if row.method.startswith("stock") else "^"
        label = row.method if len(schedules) == 1 else f"{row.method} ({row.schedule}x)"
        ax.errorbar(x, row.zeroshot_top1_mean, yerr=err, fmt=marker, color=colours[row.method], capsize=4,
                    label=label, markersize=7,
                    fillstyle=SCHEDULE_FILLS[schedules.index(row.schedule) % len(SCHEDULE_FILLS)])
    for schedule in schedules:  # the stock ladder as a line: stock's accuracy at each compute
        ladder = points[(points.schedule == schedule) & points.method.isin(LADDER)].sort_values(
            "train_gflops_per_image")
        if len(ladder) >= 2:
            ax.plot(ladder.train_gflops_per_image, ladder.zeroshot_top1_mean, "-", color="grey", lw=1, zorder=0,
                    label="stock ladder" + (f" ({schedule}x)" if len(schedules) > 1 else ""))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method")
    ax.set_xlabel("training GFLOPs per image (both towers, full schedule); equal costs spread apart")
    ax.set_ylabel("zero-shot top-1 (%), mean and 95% CI over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(out: Path, frame: pd.DataFrame, order: Sequence[str], path: Path, smooth: int = 5) -> None:
    """One cell's training loss against samples seen, mean over seeds (left), and its difference to stock's
    (right); both smoothed by a running mean over ``smooth`` log points."""
    plt = pyplot()
    curves = {}  # method -> {seed: curve}
    for method in order:
        for run in frame[(frame.status == "ok") & (frame.method == method)].itertuples():
            path_csv = out / "runs" / cell_name(run.regime, run.schedule) / method / f"seed{run.seed}" / "curve.csv"
            if path_csv.exists():
                curves.setdefault(method, {})[run.seed] = pd.read_csv(path_csv).groupby("samples").loss.mean()
    fig, (ax, diff_ax) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120)
    cmap = plt.get_cmap("tab20")
    stock = curves.get("stock", {})
    for i, (method, runs) in enumerate(curves.items()):
        style = "-" if method.startswith(("elip", "stock")) else "--"
        mean = pd.concat(runs.values(), axis=1).mean(axis=1)
        smoothed = mean.rolling(smooth, min_periods=1, center=True).mean()
        ax.plot(smoothed.index, smoothed.values, style, color=cmap(i % 20), label=f"{method} ({len(runs)})", lw=1.2)
        seeds = sorted(set(runs) & set(stock))
        if method != "stock" and seeds:  # paired by seed; stock's loss interpolated at this method's points
            gaps = [runs[k] - np.interp(runs[k].index, stock[k].index, stock[k].values) for k in seeds]
            gap = pd.concat(gaps, axis=1).mean(axis=1).rolling(smooth, min_periods=1, center=True).mean()
            diff_ax.plot(gap.index, gap.values, style, color=cmap(i % 20), lw=1.2)
    cell = cell_name(frame.regime.iloc[0], frame.schedule.iloc[0])
    ax.set_xlabel("samples seen")
    ax.set_ylabel("training contrastive loss (trainer's log, mean over seeds)")
    ax.set_title(f"Training loss, {cell}")
    ax.legend(fontsize=7, ncol=2)
    diff_ax.axhline(0, color="black", lw=0.8)
    diff_ax.set_xlabel("samples seen")
    diff_ax.set_ylabel("loss minus stock's (same seed, same samples seen), mean over seeds")
    diff_ax.set_title("Difference to stock (guided losses include what the selection leaks)")
    for axis in (ax, diff_ax):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_report(out: Path, settings: dict, methods: Dict[str, str], folder: Optional[Path] = None) -> List[Path]:
    """Write the report into ``folder`` (default ``out``): the tables, ``results.md``, ``headline.md`` (the README's
    verdict tables), one pareto plot per regime,
    one curves plot per cell and ``settings.json``; returns their paths."""
    folder = Path(folder or out)
    frame = collect(out)
    written = [write_atomic(folder / "results.csv", frame.round(4).to_csv(index=False)),
               write_atomic(folder / "verdicts.csv", verdict_table(frame).round(4).to_csv(index=False)),
               write_atomic(folder / "results.md", report_markdown(frame, settings, methods)),
               write_atomic(folder / "headline.md", headline(frame, settings, methods))]
    cells = list(cell_frames(frame))
    for regime in regime_order(frame.regime):
        points = pd.concat([summary(rows, methods).assign(schedule=schedule)
                            for cell_regime, schedule, rows in cells if cell_regime == regime])
        written.append(folder / f"pareto_{regime}.png")
        plot_pareto(points, written[-1], f"Accuracy against training compute, {regime}")
    for regime, schedule, rows in cells:
        written.append(folder / f"curves_{cell_name(regime, schedule)}.png")
        plot_curves(out, rows, method_order(rows, methods), written[-1])
    written.append(folder / "settings.json")
    written[-1].write_text(json.dumps(settings, indent=1, default=str))
    return written
