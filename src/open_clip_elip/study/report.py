"""The study's report: ``results.csv``, ``results.md``, ``pareto.png`` and ``curves.png`` from the runs'
``result.json`` and ``curve.csv`` files (``open_clip_elip.study`` writes them; this module only reads).

Statistics: per method the mean, standard deviation and 95% confidence interval (Student's t) over
seeds; per pair of methods the same for their paired difference (same seed, same data order). A
difference whose interval contains 0 is called "not distinguishable".
"""
from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

METRICS = ("zeroshot_top1", "zeroshot_top5", "linear_probe_top1")
COLUMNS = ["method", "seed", "status", "zeroshot_top1", "zeroshot_top5", "linear_probe_top1",
           "train_gflops_per_image", "step_time_ratio", "train_seconds", "seconds_per_step", "samples_seen",
           "model", "eval_model", "trainer_flags", "wall_seconds", "error"]


def collect(out: Path) -> pd.DataFrame:
    """One row per run (``OUT/runs/<method>/seed<k>/result.json``), with ``step_time_ratio``."""
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/seed*/result.json"))]
    if not records:
        raise FileNotFoundError(f"no finished runs under {out / 'runs'}")
    frame = pd.DataFrame(records)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    ok = frame.status == "ok"
    stock = frame[ok & (frame.method == "stock")].seconds_per_step
    frame["step_time_ratio"] = frame.seconds_per_step / stock.median() if len(stock) else np.nan
    extra = sorted(c for c in frame.columns if c not in COLUMNS and c != "resume_from")
    return frame[COLUMNS + extra].sort_values(["method", "seed"], kind="stable").reset_index(drop=True)


def interval(values: Sequence[float]) -> dict:
    """Mean, standard deviation and 95% confidence interval (t distribution) of ``values``."""
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    n = len(values)
    mean = values.mean() if n else math.nan
    sd = values.std(ddof=1) if n > 1 else math.nan
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired(frame: pd.DataFrame, method: str, reference: str, metric: str) -> dict:
    """``interval`` of ``method - reference`` over the seeds both finished."""
    ok = frame[frame.status == "ok"]
    a = ok[ok.method == method].set_index("seed")[metric]
    b = ok[ok.method == reference].set_index("seed")[metric]
    seeds = a.index.intersection(b.index)
    return interval((a[seeds] - b[seeds]).tolist())


def verdict(diff: dict, unit: str = "points") -> str:
    if diff["n"] < 2 or math.isnan(diff["low"]):
        return "too few seeds to tell"
    if diff["low"] > 0:
        return f"higher by {diff['mean']:.2f} {unit}"
    if diff["high"] < 0:
        return f"lower by {-diff['mean']:.2f} {unit}"
    return "not distinguishable"


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


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def method_order(frame: pd.DataFrame, methods: Dict[str, str]) -> List[str]:
    present = set(frame.method)
    return [m for m in methods if m in present] + sorted(present - set(methods))


def summary(frame: pd.DataFrame, methods: Dict[str, str]) -> pd.DataFrame:
    """Per method: runs, and mean/sd/CI of each metric, cost and time."""
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


def controls(frame: pd.DataFrame) -> List[str]:
    """The caption questions, answered from the paired differences (zero-shot top-1)."""
    lines, present = [], set(frame[frame.status == "ok"].method)
    metric = "zeroshot_top1"

    def say(method, reference, question):
        if {method, reference} <= present:
            d = paired(frame, method, reference, metric)
            lines.append(f"- {question} `{method}` minus `{reference}`: {fmt_diff(d)} points zero-shot top-1 "
                         f"({verdict(d)}).")

    say("elip", "elip-vision-only", "Does the paired caption beat vision-only scoring at equal cost?")
    say("elip-random-caption", "elip", "Does another row's caption beat the paired one?")
    say("elip-balanced", "elip", "Does the norm-matched fusion change the accuracy?")
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
    return lines


def report_markdown(frame: pd.DataFrame, settings: dict, methods: Dict[str, str]) -> str:
    s = summary(frame, methods)
    stock_flops = s.train_gflops_per_image.get("stock", math.nan)
    preset = settings["preset_values"]
    lines = [
        "# The study: ELIP against the token-reduction choices of OpenCLIP\n",
        f"Made by `{('python -m open_clip_elip.study ' + settings.get('command_line', '')).rstrip()}`"
        f"{'' if settings.get('command_line') else ' (the default preset)'} on "
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, CPU only, {settings['threads']} thread(s) per run, "
        f"{settings['jobs']} run(s) at a time.\n",
        f"Scale: {settings['base_model']} ({settings['image_size']} px), trained by OpenCLIP's own trainer for "
        f"{preset['epochs']} epochs of {preset['samples_per_epoch']} samples (batch {preset['batch_size']}, lr "
        f"{settings['lr']}) on `{settings['train_data']}`; evaluated by clip_benchmark on "
        f"`{settings['eval_dataset']}` (zero-shot, and a linear probe). This is a small model on a small "
        f"dataset: read the numbers as what holds at this scale, not as a forecast for ViT-B/16 on CC3M.\n",
        f"Every interval is a 95% confidence interval over seeds (t distribution); differences are paired by "
        f"seed (same initialisation seed and data order). `stock-matched` trains on "
        f"{settings['stock_matched_fraction']:.3f}x the samples (elip's training FLOPs); `flip-budget` drops "
        f"{settings['flip_budget_drop']:.3f} of the patches; `low-res` trains and is evaluated at "
        f"{settings['low_res_size']} px.\n",
        "## Accuracy and cost per method\n",
    ]
    rows = []
    for method, row in s.iterrows():
        get = {m: {k: row[f"{m}_{k}"] for k in ("n", "mean", "sd", "low", "high")} for m in METRICS}
        runs = f"{int(row.runs_ok)}" + (f" ({int(row.runs_failed)} failed)" if row.runs_failed else "")
        rows.append([f"`{method}`", runs,
                     fmt_interval(get["zeroshot_top1"]), fmt_interval(get["zeroshot_top5"]),
                     fmt_interval(get["linear_probe_top1"]),
                     f"{row.train_gflops_per_image:.4f}", f"{row.train_gflops_per_image / stock_flops:.3f}",
                     f"{row.step_time_ratio:.2f}", f"{row.train_seconds:.0f}"])
    lines.append(table(["method", "runs", "zero-shot top-1, mean ± sd [95% CI]", "zero-shot top-5",
                        "linear probe top-1", "train GFLOPs / image", "x stock", "step time x stock",
                        "train s (median)"], rows))
    lines.append("`train GFLOPs / image`: training FLOPs of both towers per image of the full schedule, from the "
                 "token counts (the benchmark's cost model); step time: the trainer's median seconds per step over "
                 "stock's, measured with other runs sharing the machine (see the caveats).\n")
    lines.append("## Paired differences (points)\n")
    rows = []
    for method in s.index:
        cells = [f"`{method}`"]
        for reference in ("stock", "stock-matched"):
            for metric in ("zeroshot_top1", "linear_probe_top1"):
                d = paired(frame, method, reference, metric) if method != reference else {"n": 0}
                cells.append(fmt_diff(d) + (f" ({verdict(d)})" if d["n"] > 1 else ""))
        rows.append(cells)
    lines.append(table(["method", "zero-shot vs stock", "linear probe vs stock", "zero-shot vs stock-matched",
                        "linear probe vs stock-matched"], rows))
    lines.append("## Is ELIP worth it?\n")
    lines += worth_it(frame, s) + [""]
    lines.append("## Does the caption matter, and does it leak?\n")
    lines += controls(frame) + [""]
    lines.append("The leak diagnostic (`python -m open_clip_elip.leak`) encodes held-out image-caption pairs three "
                 "ways with the same checkpoint: unguided (as every evaluation does), guided by their own captions, "
                 "and guided by shuffled captions, and measures in-batch image-to-text retrieval and the contrastive "
                 "loss. A gap between own and unguided is information about the caption that the token selection "
                 "passes into the image embedding, plus whatever pruning itself changes (it is there even when the "
                 "caption plays no part, e.g. `elip-vision-only`); the gap between own and shuffled captions is the "
                 "caption's own part. Training losses of guided models include both.\n")
    lines.append(leak_section(frame, methods))
    lines.append("## Caveats\n")
    lines += [
        "- Scale: one small ViT, one small dataset whose captions are built from ten class names; the paper "
        "trained ViT-S/16 and ViT-B/16 on millions of web captions. What holds here may not hold there.",
        "- Step times are the trainer's own, measured while other runs (and anything else on the machine) shared "
        "the cores; use them as rough ratios. The benchmark (`python -m open_clip_elip.bench`) measures speed "
        "properly; GFLOPs come from token counts and do not depend on the machine.",
        "- Evaluation never prunes for the ELIP family (no caption), so their scores are those of the stock model "
        "with the same weights; `evit` prunes at inference as EViT does; `low-res` is evaluated at its own, lower "
        "image size (no tuning at full size); patch dropout is off at evaluation.",
        "- Accuracies are reproducible for a given seed on one machine (fixed threads, seeded data order); other "
        "CPUs or thread counts can change the last digits and, through them, a run's trajectory.",
        "",
    ]
    failed = frame[frame.status != "ok"]
    if len(failed):
        lines.append("## Failed runs\n")
        lines.append(table(["method", "seed", "error"], [[r.method, r.seed, str(r.error).splitlines()[0][:200]]
                                                        for r in failed.itertuples()]))
    lines.append("## Methods\n")
    lines += [f"- `{m}`: {methods.get(m, '')}" for m in s.index] + [""]
    return "\n".join(lines)


def worth_it(frame: pd.DataFrame, s: pd.DataFrame) -> List[str]:
    """ELIP against each other method, zero-shot top-1, with their relative costs."""
    if "elip" not in s.index:
        return ["No `elip` runs in this study."]
    lines = []
    elip_flops = s.train_gflops_per_image["elip"]
    for method in s.index:
        if method == "elip":
            continue
        d = paired(frame, "elip", method, "zeroshot_top1")
        cost = s.train_gflops_per_image[method] / elip_flops
        lines.append(f"- `elip` vs `{method}` ({cost:.2f}x elip's training FLOPs): {fmt_diff(d)} points zero-shot "
                     f"top-1, elip {verdict(d)}.")
    return lines


def plot_pareto(s: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    s = s[s.zeroshot_top1_n > 0]
    span = (s.train_gflops_per_image.max() - s.train_gflops_per_image.min()) or 1.0
    cost = s.train_gflops_per_image.round(6)
    rank, count = s.groupby(cost).cumcount(), s.groupby(cost).train_gflops_per_image.transform("size")
    cmap = plt.get_cmap("tab20")
    for i, (method, row) in enumerate(s.iterrows()):  # methods of equal cost are spread apart a little
        x = row.train_gflops_per_image + (rank[method] - (count[method] - 1) / 2) * 0.01 * span
        err = (row.zeroshot_top1_high - row.zeroshot_top1_mean) if row.zeroshot_top1_n > 1 else 0
        marker = "o" if method.startswith("elip") else "s" if method.startswith("stock") else "^"
        ax.errorbar(x, row.zeroshot_top1_mean, yerr=err, fmt=marker, color=cmap(i % 20), capsize=4, label=method,
                    markersize=7)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method")
    ax.set_xlabel("training GFLOPs per image (both towers, full schedule); equal costs spread apart")
    ax.set_ylabel("zero-shot top-1 (%), mean and 95% CI over seeds")
    ax.set_title("Accuracy against training compute")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(out: Path, frame: pd.DataFrame, order: Sequence[str], path: Path, smooth: int = 5) -> None:
    """Training loss against samples seen, mean over seeds (left), and its difference to stock's (right);
    both smoothed by a running mean over ``smooth`` log points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}  # method -> {seed: curve}
    for method in order:
        for run in frame[(frame.status == "ok") & (frame.method == method)].itertuples():
            path_csv = out / "runs" / method / f"seed{run.seed}" / "curve.csv"
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
    ax.set_xlabel("samples seen")
    ax.set_ylabel("training contrastive loss (trainer's log, mean over seeds)")
    ax.set_title("Training loss")
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


def write_report(out: Path, settings: dict, methods: Dict[str, str], folder: Optional[Path] = None) -> List[Path]:
    """Write the four report files into ``folder`` (default ``out``); returns their paths."""
    folder = Path(folder or out)
    frame = collect(out)
    paths = [folder / "results.csv", folder / "results.md", folder / "pareto.png", folder / "curves.png"]
    tmp = folder / "results.csv.tmp"
    frame.round(4).to_csv(tmp, index=False)
    tmp.replace(paths[0])
    tmp = folder / "results.md.tmp"
    tmp.write_text(report_markdown(frame, settings, methods))
    tmp.replace(paths[1])
    s = summary(frame, methods)
    plot_pareto(s, paths[2])
    plot_curves(out, frame, method_order(frame, methods), paths[3])
    (folder / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    return paths + [folder / "settings.json"]
