"""Results tables from clip_benchmark's JSON files, in the layout of the ELIP paper's Table 6.

    python -m open_clip_elip.results DIR_OR_FILE... [--out PREFIX] [--paper] [--baseline NAME]

Rows are models, columns ``<dataset> <metric>``: zero-shot top-1/top-5 (``acc1``, ``acc5``) and
linear-probe top-1 (``lp_acc1``), all in %. The last column gives each ELIP model's scores as a
percentage of its stock model's (mean over the columns both have): the stock model of
``ViT-B-16-elip`` is the ``ViT-B-16`` row, or the ``--baseline`` row for every other row.
``--paper`` adds the paper's own figures as rows. A results file that cannot be read is reported
on stderr and left out; the exit status is 1 only if none could be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

METRICS = ("acc1", "acc5", "lp_acc1")
ZERO_SHOT_ORDER = ("imagenet1k", "imagenetv2", "imagenet-r")  # the paper's benchmark set, in its order
LINEAR_PROBE_ORDER = ("cifar10", "cifar100", "imagenet1k", "imagenetv2", "imagenet-r")
PERCENT_COLUMN = "% of stock"
ELIP_SUFFIX = "-elip"

# ELIP paper, Table 6 (CLIP pre-trained from scratch on CC3M+ / CC12M+), in %.
PAPER_COLUMNS = ("imagenet1k acc1", "imagenet1k acc5", "cifar10 lp_acc1", "cifar100 lp_acc1",
                 "imagenet1k lp_acc1", "imagenetv2 lp_acc1", "imagenet-r lp_acc1")
PAPER_TABLE6 = {
    ("ViT-S/16", "CLIP", "CC3M+"): (18.70, 37.71, 95.42, 79.08, 65.92, 52.72, 27.47),
    ("ViT-S/16", "EViT", "CC3M+"): (15.12, 31.86, 94.30, 76.53, 64.70, 51.05, 25.07),
    ("ViT-S/16", "ELIP", "CC3M+"): (17.69, 36.28, 94.53, 77.94, 64.89, 51.79, 26.86),
    ("ViT-B/16", "CLIP", "CC3M+"): (20.65, 40.82, 95.32, 79.96, 68.90, 55.59, 28.44),
    ("ViT-B/16", "EViT", "CC3M+"): (17.48, 35.99, 94.77, 77.29, 67.55, 54.10, 26.40),
    ("ViT-B/16", "ELIP", "CC3M+"): (20.63, 40.48, 95.02, 79.32, 68.81, 55.55, 27.81),
    ("ViT-S/16", "CLIP", "CC12M+"): (34.78, 62.42, 96.10, 82.64, 69.37, 56.36, 32.92),
    ("ViT-S/16", "EViT", "CC12M+"): (28.41, 54.77, 95.10, 79.77, 67.92, 54.75, 30.67),
    ("ViT-S/16", "ELIP", "CC12M+"): (33.78, 61.70, 95.83, 82.06, 69.15, 56.05, 32.27),
    ("ViT-B/16", "CLIP", "CC12M+"): (35.78, 63.47, 95.76, 81.38, 70.07, 57.16, 30.56),
    ("ViT-B/16", "EViT", "CC12M+"): (25.98, 56.39, 94.79, 79.43, 68.82, 55.57, 27.92),
    ("ViT-B/16", "ELIP", "CC12M+"): (34.37, 62.57, 95.45, 81.87, 71.31, 58.42, 32.61),
}


def load_results(paths: Iterable) -> tuple[pd.DataFrame, list[str]]:
    """Read clip_benchmark result files (or folders of them) into one row per file.

    Returns ``(frame, errors)``: the frame has clip_benchmark's fields (``model``, ``pretrained``,
    ``dataset``, ``task``, ``metrics.<name>``...) and ``file``; ``errors`` has one line per path
    that could not be read, naming it.
    """
    records, errors = [], []
    for folder_or_file in map(Path, paths):
        files = sorted(folder_or_file.glob("*.json")) if folder_or_file.is_dir() else [folder_or_file]
        if not files:
            errors.append(f"{folder_or_file}: no .json results in this folder")
        for path in files:
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict) \
                        or not {"model", "dataset"} <= record.keys():
                    raise ValueError("not a clip_benchmark result (needs 'model', 'dataset' and a 'metrics' object)")
            except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
                errors.append(f"{path}: {exc}")
                continue
            records.append({"pretrained": "", **record, "file": str(path)})
    return pd.json_normalize(records), errors


def row_labels(results: pd.DataFrame) -> pd.Series:
    """One name per model: the model name, with the checkpoint's file name if a model has several."""
    checkpoints = results.groupby("model")["pretrained"].transform("nunique")
    named = results["model"] + " " + results["pretrained"].map(lambda p: Path(str(p)).name)
    return results["model"].where(checkpoints <= 1, named)


def column_key(column: str) -> tuple:
    """Paper order: zero-shot columns, then linear probe; the paper's datasets first, the others by name."""
    dataset, metric = column.rsplit(" ", 1)
    probe = metric.startswith("lp_")
    order = LINEAR_PROBE_ORDER if probe else ZERO_SHOT_ORDER
    return probe, order.index(dataset) if dataset in order else len(order), dataset, metric


def baselines(models: pd.Series, baseline: str | None = None) -> pd.Series:
    """The row each row is compared with (``None`` for none), from row label to model name."""
    labels = list(models.index)
    if baseline is not None:
        matches = [label for label in labels if baseline in (label, models[label])]
        if len(matches) != 1:
            raise ValueError(f"baseline {baseline!r} must name exactly one row; rows: {', '.join(labels)}")
        return pd.Series({label: None if label == matches[0] else matches[0] for label in labels}, dtype=object)
    chosen = {}
    for label, model in models.items():
        stock_model = model.removesuffix(ELIP_SUFFIX)
        stock = [other for other in labels if stock_model != model and models[other] == stock_model]
        if len(stock) > 1:
            raise ValueError(f"several {stock_model} rows ({', '.join(stock)}) to compare {label} with: "
                             "name one as the baseline")
        chosen[label] = stock[0] if stock else None
    return pd.Series(chosen, dtype=object)


def paper_table() -> tuple[pd.DataFrame, pd.Series]:
    """The paper's figures as table rows, and each row's baseline (CLIP of the same size and data)."""
    label = "paper {} {} {}".format
    table = pd.DataFrame([values for values in PAPER_TABLE6.values()], columns=list(PAPER_COLUMNS),
                         index=[label(*key) for key in PAPER_TABLE6])
    base = pd.Series({label(*key): None if key[1] == "CLIP" else label(key[0], "CLIP", key[2])
                      for key in PAPER_TABLE6}, dtype=object)
    return table, base


def percent_of(table: pd.DataFrame, base: pd.Series) -> pd.Series:
    """Mean over the shared columns of 100 x row / baseline row (NaN without a baseline)."""
    ratio = {label: (100 * table.loc[label] / table.loc[other]).mean() if other else float("nan")
             for label, other in base.items()}
    return pd.Series(ratio, dtype=float)


def results_table(results: pd.DataFrame, baseline: str | None = None, paper: bool = False) -> pd.DataFrame:
    """The paper's layout from ``load_results``' frame: models x ``<dataset> <metric>`` in %, plus
    ``% of stock``; ``paper`` appends the paper's Table 6 rows (compared with their own CLIP rows)."""
    metric_columns = [f"metrics.{m}" for m in METRICS if f"metrics.{m}" in results]
    labelled = results.assign(label=row_labels(results), dataset=results["dataset"].str.removeprefix("wds/"))
    long = labelled.melt(id_vars=["label", "dataset"], value_vars=metric_columns, var_name="metric").dropna()
    long["column"] = long["dataset"] + " " + long["metric"].str.removeprefix("metrics.")
    table = 100 * long.pivot_table(index="label", columns="column", values="value", aggfunc="last", sort=False)
    table = table.reindex(labelled["label"].drop_duplicates())  # rows in the order the files came
    base = baselines(labelled.drop_duplicates("label").set_index("label")["model"], baseline)
    if paper:
        ours = table
        table, paper_base = paper_table()
        table = pd.concat([ours, table])
        base = pd.concat([base, paper_base])
    table = table[sorted(table.columns, key=column_key)]
    table[PERCENT_COLUMN] = percent_of(table, base)
    table.index.name = "model"
    table.columns.name = None
    return table


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A Markdown table (numbers with ``digits`` decimals, blank where missing, text as it is)."""
    def cell(value):
        if isinstance(value, str):
            return value
        return "" if pd.isna(value) else f"{value:.{digits}f}"

    def cells(values):
        return "| " + " | ".join(values) + " |"
    rows = [cells([str(label), *map(cell, values)]) for label, values in zip(table.index, table.to_numpy())]
    return "\n".join([cells([table.index.name or "", *table.columns]),
                      cells(["---", *["---:"] * len(table.columns)]), *rows]) + "\n"


def write_tables(table: pd.DataFrame, prefix) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv``; returns their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    md_path.write_text(to_markdown(table))
    table.to_csv(csv_path)
    return md_path, csv_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="clip_benchmark result files, or folders of them")
    parser.add_argument("--out", help="also write the table to OUT.md and OUT.csv")
    parser.add_argument("--paper", action="store_true", help="add the paper's Table 6 figures")
    parser.add_argument("--baseline", help="the row (model name) every other row is compared with")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results, errors = load_results(args.paths)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if results.empty:
        print("error: no results could be read", file=sys.stderr)
        return 1
    try:
        table = results_table(results, baseline=args.baseline, paper=args.paper)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(table), end="")
    if args.out:
        print("wrote {} and {}".format(*write_tables(table, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
