"""Public caption annotations -> webdataset shards in OpenCLIP's format, and the manifest to train on them.

Each sample is ``<key>.jpg`` + ``<key>.txt`` (caption) + ``<key>.json`` (metadata), shards ``00000.tar``,
``00001.tar``... with a ``sizes.json`` beside them (shard basename -> sample count), as OpenCLIP reads them.

* URL sources (CC3M, CC12M, SBU, any url/caption table): the annotations are normalised with pandas into one
  url/caption table, which img2dataset downloads into shards (``pip install 'open_clip_elip[data]'``).
* Local images (MSCOCO, any folder of images + captions table): written with webdataset's ``TarWriter``.
* ``manifest``: the ``--train-data`` string (sources joined with ``::``) and ``--train-num-samples``.
  Pass ``--train-num-samples`` whenever several sources are joined: OpenCLIP only reads the ``sizes.json``
  of the first shard's folder.

Bad rows (non-UTF-8 or malformed lines, empty captions, missing or corrupt images) are skipped and counted;
a shard is written to ``NAME.tar.tmp`` and renamed when complete, so a failed run leaves no broken shard.

    python -m open_clip_elip.shards cc3m Train_GCC-training.tsv --output /data/cc3m
    python -m open_clip_elip.shards coco captions_train2017.json /data/coco/train2017 --output /data/coco-shards
    python -m open_clip_elip.shards manifest /data/cc3m /data/sbu /data/coco-shards
"""
import argparse
import importlib.util
import io
import json
import logging
import os
import shlex
import sys
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import webdataset as wds
from PIL import Image, ImageOps
from webdataset.tariterators import base_plus_ext

SIZES_FILE = "sizes.json"
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp"}  # what OpenCLIP's loader renames to "image"
DATA_EXTRA_HINT = "pip install 'open_clip_elip[data]'"
_LOG = logging.getLogger(__name__)


class SkipSample(Exception):
    """A sample left out of the shards; the message is the reason reported in the summary."""


@dataclass
class ShardReport:
    """What a conversion wrote (shard basename -> samples) and what it skipped (reason -> rows)."""

    output: Path
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"wrote {len(self.sizes)} shards, {sum(self.sizes.values())} samples to {self.output}"]
        lines += [f"skipped {count} rows: {reason}" for reason, count in self.skipped.most_common()]
        return "\n".join(lines)


# ---------------------------------------------------------------- annotations -> url/caption (or path/caption) table

def _utf8_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_lines(path) -> pd.Series:
    """Lines of a text file indexed by 1-based line number; lines that are not UTF-8 are None."""
    lines = pd.Series(Path(path).read_bytes().splitlines(), dtype=object).map(_utf8_or_none)
    lines.index = pd.RangeIndex(1, len(lines) + 1, name="line")
    return lines


def _drop(frame, mask, reason: str, skipped: Counter):
    """``frame`` without the rows in ``mask``, counting them under ``reason``."""
    if mask.any():
        skipped[reason] += int(mask.sum())
    return frame[~mask]


def _split_lines(lines: pd.Series, columns: list[str], skipped: Counter) -> pd.DataFrame:
    """Tab-separated lines -> table with ``columns`` and a ``line`` column; bad lines counted in ``skipped``."""
    lines = _drop(lines, lines.isna(), "non-UTF-8 line", skipped)
    malformed = lines.str.count("\t") != len(columns) - 1
    lines = _drop(lines, malformed, f"malformed line (not {len(columns)} tab-separated fields)", skipped)
    table = pd.DataFrame(lines.str.split("\t").tolist(), index=lines.index, columns=columns)
    return table.reset_index()


def _clean(table: pd.DataFrame, target: str, skipped: Counter) -> pd.DataFrame:
    """Collapse whitespace in captions, drop rows with an empty caption or ``target`` (url or path)."""
    table = table.assign(
        caption=table["caption"].fillna("").astype(str).str.replace(r"\s+", " ", regex=True).str.strip(),
        **{target: table[target].fillna("").astype(str).str.strip()},
    )
    table = _drop(table, table["caption"] == "", "empty caption", skipped)
    table = _drop(table, table[target] == "", f"missing {target}", skipped)
    columns = [target, "caption", *(c for c in table.columns if c not in (target, "caption"))]
    return table[columns].reset_index(drop=True)


def cc3m_table(tsv) -> tuple[pd.DataFrame, Counter]:
    """Conceptual Captions 3M (``Train_GCC-training.tsv``: caption<TAB>url, no header) -> url/caption table."""
    skipped = Counter()
    return _clean(_split_lines(read_lines(tsv), ["caption", "url"], skipped), "url", skipped), skipped


def cc12m_table(tsv) -> tuple[pd.DataFrame, Counter]:
    """Conceptual 12M (``cc12m.tsv``: url<TAB>caption, no header) -> url/caption table."""
    skipped = Counter()
    return _clean(_split_lines(read_lines(tsv), ["url", "caption"], skipped), "url", skipped), skipped


def sbu_table(urls_txt, captions_txt) -> tuple[pd.DataFrame, Counter]:
    """SBU Captions (line-aligned ``SBU_captioned_photo_dataset_{urls,captions}.txt``) -> url/caption table."""
    urls, captions = read_lines(urls_txt), read_lines(captions_txt)
    if len(urls) != len(captions):
        raise ValueError(f"{urls_txt} ({len(urls)} lines) and {captions_txt} ({len(captions)} lines) are not "
                         "line-aligned: pass the urls and captions files of the same SBU release")
    skipped = Counter()
    table = pd.DataFrame({"url": urls, "caption": captions})
    table = _drop(table, table.isna().any(axis=1), "non-UTF-8 line", skipped).reset_index()
    return _clean(table, "url", skipped), skipped


def coco_table(captions_json) -> tuple[pd.DataFrame, Counter]:
    """MSCOCO captions (``captions_train2017.json``) -> path/caption table, one row per caption annotation."""
    data = json.loads(Path(captions_json).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(f"{captions_json} is not a COCO captions file: it needs 'images' and 'annotations' keys")
    images = pd.DataFrame(data["images"], columns=["id", "file_name"])
    images = images.rename(columns={"id": "image_id", "file_name": "path"})
    captions = pd.DataFrame(data["annotations"], columns=["id", "image_id", "caption"])
    table = captions.rename(columns={"id": "caption_id"}).merge(images, on="image_id", how="left",
                                                                validate="many_to_one")
    skipped = Counter()
    table = _drop(table, table["path"].isna(), "caption of an image_id missing from 'images'", skipped)
    return _clean(table, "path", skipped), skipped


def read_table(path, target_col: str, caption_col: str, target: str) -> tuple[pd.DataFrame, Counter]:
    """A user table (.tsv with a header line, .parquet or .jsonl) -> ``target``/caption table, other columns kept."""
    path, skipped = Path(path), Counter()
    if path.suffix == ".tsv":
        lines = read_lines(path)
        if lines.empty or lines.iloc[0] is None:
            raise ValueError(f"{path} has no UTF-8 header line (tab-separated column names)")
        table = _split_lines(lines.iloc[1:], lines.iloc[0].split("\t"), skipped)
    elif path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        table = pd.read_json(path, lines=True, dtype=False)
    else:
        raise ValueError(f"{path}: unknown table format '{path.suffix}'; use .tsv (with a header), .parquet or .jsonl")
    missing = [c for c in (target_col, caption_col) if c not in table.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing}; its columns are {list(table.columns)}")
    table = table.rename(columns={target_col: target, caption_col: "caption"})
    return _clean(table, target, skipped), skipped


def write_table(table: pd.DataFrame, path) -> Path:
    """Write a normalised table as .parquet or .tsv (img2dataset reads both)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            table.to_parquet(path, index=False)
        except ImportError as error:
            raise ImportError(f"writing {path} needs pyarrow: {DATA_EXTRA_HINT}, or use a .tsv table") from error
    elif path.suffix == ".tsv":
        table.to_csv(path, sep="\t", index=False)
    else:
        raise ValueError(f"{path}: the table must end in .parquet or .tsv")
    return path


# ---------------------------------------------------------------- url table -> shards (img2dataset)

def img2dataset_arguments(table, output, *, extra_columns=(), processes: int = 1, threads: int = 64,
                          image_size: int = 256, samples_per_shard: int = 10000, timeout: int = 10) -> dict:
    """Keyword arguments of ``img2dataset.download`` for a normalised url/caption table."""
    table = Path(table)
    return dict(
        url_list=str(table), input_format=table.suffix.lstrip("."), url_col="url", caption_col="caption",
        save_additional_columns=list(extra_columns) or None, output_format="webdataset",
        output_folder=str(output), processes_count=processes, thread_count=threads, image_size=image_size,
        resize_mode="keep_ratio", resize_only_if_bigger=True, encode_format="jpg", encode_quality=95,
        number_sample_per_shard=samples_per_shard, timeout=timeout, incremental_mode="incremental",
        enable_wandb=False,
    )


def img2dataset_command(arguments: dict) -> str:
    """The img2dataset command line doing the same as ``img2dataset.download(**arguments)``."""
    flags = [f"--{key}={json.dumps(value) if isinstance(value, list) else value}"
             for key, value in arguments.items() if value is not None]
    return shlex.join(["img2dataset", *flags])


def download_failures(output) -> Counter:
    """img2dataset's failures (error message -> rows) summed over the ``*_stats.json`` of a shard folder."""
    failures = Counter()
    for stats in Path(output).glob("*_stats.json"):
        failures.update(json.loads(stats.read_text())["status_dict"])
    failures.pop("success", None)
    return failures


def download(arguments: dict, skipped: Counter | None = None, max_reasons: int = 20) -> ShardReport:
    """Run img2dataset on a url table, then write ``sizes.json``; an interrupted run resumes where it stopped."""
    try:
        import img2dataset
    except ImportError as error:
        raise ImportError(f"downloading URL sources needs img2dataset: {DATA_EXTRA_HINT} (or write the table with "
                          "--table-only and run the printed img2dataset command where it is installed)") from error
    output = Path(arguments["output_folder"])
    (output / SIZES_FILE).unlink(missing_ok=True)  # img2dataset's resume reads every *.json as <shard>_stats.json
    img2dataset.download(**arguments)
    failures = download_failures(output)
    report = ShardReport(output, write_sizes(output), Counter(skipped))
    for reason, count in failures.most_common(max_reasons):
        report.skipped[f"download failed: {reason}"] = count
    if len(failures) > max_reasons:
        report.skipped["download failed: other reasons"] = sum(failures.values()) - sum(
            count for _, count in failures.most_common(max_reasons))
    return report


# ---------------------------------------------------------------- local images -> shards (webdataset TarWriter)

def encode_image(path: Path, image_size: int) -> tuple[bytes, dict]:
    """JPEG bytes of an image whose shorter side is at most ``image_size`` (0: any), and its sizes.

    JPEGs that need no resizing are kept byte for byte; others are converted to RGB and re-encoded.
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SkipSample("missing image") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            meta = {"original_width": image.width, "original_height": image.height}
            shrink = 0 < image_size < min(image.size)
            if image.format != "JPEG" or image.mode != "RGB" or shrink:
                image = image.convert("RGB")
                if shrink:
                    image = ImageOps.cover(image, (image_size, image_size), method=Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=95)
                data = buffer.getvalue()
            return data, {**meta, "width": image.width, "height": image.height}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise SkipSample("corrupt image") from None


def _write_shard(path: Path, rows: list[dict], image_root: Path, image_size: int, digits: int) -> Counter:
    """Write one shard to ``path`` through ``path.tmp`` (keys: shard stem + ``digits``-wide row number)."""
    skipped = Counter()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with wds.TarWriter(str(tmp)) as sink:
            for index, row in enumerate(rows):
                try:
                    image, sizes = encode_image(image_root / row["path"], image_size)
                except SkipSample as skip:
                    skipped[str(skip)] += 1
                    continue
                key = f"{path.stem}{index:0{digits}d}"
                sink.write({"__key__": key, "jpg": image, "txt": row["caption"], "json": {**row, **sizes, "key": key}})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _LOG.info("wrote %s", path)
    return skipped


def _write_shard_task(task) -> Counter:
    return _write_shard(*task)


def write_image_shards(table: pd.DataFrame, image_root, output, *, skipped: Counter | None = None,
                       samples_per_shard: int = 10000, image_size: int = 256, processes: int = 1,
                       overwrite: bool = False) -> ShardReport:
    """Shards of a path/caption table of local images (paths relative to ``image_root``), then ``sizes.json``."""
    image_root, output = Path(image_root), Path(output)
    if not image_root.is_dir():
        raise ValueError(f"image folder {image_root} does not exist")
    output.mkdir(parents=True, exist_ok=True)
    existing = sorted(output.glob("*.tar"))
    if existing and not overwrite:
        raise FileExistsError(f"{output} already holds {len(existing)} shards: choose an empty folder or overwrite")
    for stale in [*existing, *output.glob("*.tar.tmp"), output / SIZES_FILE]:
        stale.unlink(missing_ok=True)
    tasks = [(output / f"{shard:05d}.tar", table.iloc[start:start + samples_per_shard].to_dict("records"),
              image_root, image_size, len(str(samples_per_shard - 1)))
             for shard, start in enumerate(range(0, len(table), samples_per_shard))]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            counts = list(pool.map(_write_shard_task, tasks))
    else:
        counts = [_write_shard_task(task) for task in tasks]
    return ShardReport(output, write_sizes(output), sum(counts, Counter(skipped)))


# ---------------------------------------------------------------- manifest

def count_samples(shard) -> int:
    """Samples of a shard that OpenCLIP's loader keeps: keys with a caption (.txt) and an image."""
    try:
        with tarfile.open(shard) as tar:
            names = tar.getnames()
    except tarfile.TarError as error:
        raise ValueError(f"{shard} is not a readable tar ({error}): delete it and convert its source again") from None
    extensions: dict[str, set] = {}
    for name in names:
        key, extension = base_plus_ext(name)
        extensions.setdefault(key, set()).add(extension)
    return sum("txt" in found and bool(found & IMAGE_EXTENSIONS) for found in extensions.values())


def write_sizes(folder) -> dict[str, int]:
    """Count the samples of every shard of ``folder`` and write its ``sizes.json`` (basename -> count)."""
    folder = Path(folder)
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise ValueError(f"{folder} holds no .tar shards: convert a source into it first")
    if any(folder.glob("*_stats.json")):  # img2dataset writes <shard>_stats.json once a shard is complete
        unfinished = [s.name for s in shards if not (folder / f"{s.stem}_stats.json").exists()]
        if unfinished:
            raise ValueError(f"{folder}: img2dataset has not finished {unfinished[:5]} ({len(unfinished)} shards): "
                             "run the same download again, it resumes unfinished shards")
    sizes = {shard.name: count_samples(shard) for shard in shards}
    (folder / SIZES_FILE).write_text(json.dumps(sizes, indent=1))
    return sizes


def shard_patterns(folder, names) -> list[str]:
    """Brace-expandable patterns covering the shard ``names`` of ``folder``, one per run of consecutive numbers."""
    folder = Path(folder)
    stems = sorted(Path(name).stem for name in names)
    if not all(stem.isdigit() and len(stem) == len(stems[0]) for stem in stems):
        return [str(folder / name) for name in sorted(names)]
    numbers = sorted(int(stem) for stem in stems)
    width, runs = len(stems[0]), []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return [str(folder / (f"{a:0{width}d}.tar" if a == b else f"{{{a:0{width}d}..{b:0{width}d}}}.tar"))
            for a, b in runs]


@dataclass
class Manifest:
    """What to pass to ``open_clip_train.main`` for a set of shard folders."""

    train_data: str
    train_num_samples: int
    sources: dict[str, dict[str, int]]  # folder -> {shard basename: samples}

    def arguments(self) -> str:
        return f"--train-data {shlex.quote(self.train_data)}\n--train-num-samples {self.train_num_samples}"


def build_manifest(folders) -> Manifest:
    """Count every source folder's shards, write their ``sizes.json`` and join them with ``::``."""
    sources, patterns = {}, []
    for folder in folders:
        folder = Path(folder).resolve()
        sources[str(folder)] = sizes = write_sizes(folder)
        patterns += shard_patterns(folder, sizes)
    total = sum(sum(sizes.values()) for sizes in sources.values())
    return Manifest("::".join(patterns), total, sources)


# ---------------------------------------------------------------- command line

def _existing_file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return Path(text)


def _existing_dir(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return Path(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _shard_options(parser, threads: bool):
    parser.add_argument("--output", type=Path, required=True, help="folder for the shards")
    parser.add_argument("--processes", type=_positive, default=os.cpu_count(), help="worker processes")
    if threads:
        parser.add_argument("--image-size", type=_positive, default=256,
                            help="shrink images so their shorter side is at most this")
    else:
        parser.add_argument("--image-size", type=_non_negative, default=256,
                            help="shrink images so their shorter side is at most this (0: keep their size)")
    parser.add_argument("--samples-per-shard", type=_positive, default=10000)
    if threads:
        parser.add_argument("--table", type=Path, help="normalised url/caption table, .parquet or .tsv "
                                                       "(default: OUTPUT.parquet beside the shard folder, "
                                                       "OUTPUT.tsv without pyarrow)")
        parser.add_argument("--table-only", action="store_true",
                            help="write the table and print the img2dataset command instead of downloading")
        parser.add_argument("--threads", type=_positive, default=64, help="download threads per process")
        parser.add_argument("--timeout", type=_positive, default=10, help="seconds per download")
    else:
        parser.add_argument("--overwrite", action="store_true", help="replace shards already in --output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m open_clip_elip.shards", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("cc3m", help="CC3M: Train_GCC-training.tsv (caption<TAB>url) -> shards")
    command.add_argument("tsv", type=_existing_file)
    _shard_options(command, threads=True)
    command = commands.add_parser("cc12m", help="CC12M: cc12m.tsv (url<TAB>caption) -> shards")
    command.add_argument("tsv", type=_existing_file)
    _shard_options(command, threads=True)
    command = commands.add_parser("sbu", help="SBU Captions: line-aligned urls + captions text files -> shards")
    command.add_argument("urls", type=_existing_file, help="SBU_captioned_photo_dataset_urls.txt")
    command.add_argument("captions", type=_existing_file, help="SBU_captioned_photo_dataset_captions.txt")
    _shard_options(command, threads=True)
    command = commands.add_parser("urls", help="any url/caption table (.tsv with header, .parquet, .jsonl) -> shards")
    command.add_argument("table_in", metavar="table", type=_existing_file)
    command.add_argument("--url-col", default="url")
    command.add_argument("--caption-col", default="caption")
    _shard_options(command, threads=True)
    command = commands.add_parser("coco", help="MSCOCO: captions_*.json + local image folder -> shards")
    command.add_argument("captions", type=_existing_file, help="e.g. annotations/captions_train2017.json")
    command.add_argument("images", type=_existing_dir, help="e.g. train2017/ (holds the json's file_name)")
    _shard_options(command, threads=False)
    command = commands.add_parser("folder", help="local images + a path/caption table -> shards")
    command.add_argument("table_in", metavar="table", type=_existing_file,
                         help=".tsv (with header), .parquet or .jsonl; paths relative to IMAGES")
    command.add_argument("images", type=_existing_dir)
    command.add_argument("--path-col", default="path")
    command.add_argument("--caption-col", default="caption")
    _shard_options(command, threads=False)
    command = commands.add_parser("manifest", help="write sizes.json and print --train-data/--train-num-samples")
    command.add_argument("folders", type=_existing_dir, nargs="+", help="shard folders, one per source")
    command.add_argument("--json", action="store_true", help="print the manifest as JSON")
    return parser


def _table(args) -> tuple[pd.DataFrame, Counter]:
    if args.command == "cc3m":
        return cc3m_table(args.tsv)
    if args.command == "cc12m":
        return cc12m_table(args.tsv)
    if args.command == "sbu":
        return sbu_table(args.urls, args.captions)
    if args.command == "urls":
        return read_table(args.table_in, args.url_col, args.caption_col, "url")
    if args.command == "coco":
        return coco_table(args.captions)
    return read_table(args.table_in, args.path_col, args.caption_col, "path")


def run(args) -> str:
    """Carry out parsed command-line ``args``; returns what to print."""
    if args.command == "manifest":
        manifest = build_manifest(args.folders)
        if args.json:
            return json.dumps({"train_data": manifest.train_data, "train_num_samples": manifest.train_num_samples,
                               "sources": manifest.sources}, indent=1)
        return manifest.arguments()
    table, skipped = _table(args)
    if table.empty:
        raise ValueError(f"no usable rows in the input: skipped {dict(skipped)}")
    if args.command in ("coco", "folder"):
        return write_image_shards(table, args.images, args.output, skipped=skipped, image_size=args.image_size,
                                  samples_per_shard=args.samples_per_shard, processes=args.processes,
                                  overwrite=args.overwrite).summary()
    suffix = ".parquet" if importlib.util.find_spec("pyarrow") else ".tsv"
    path = write_table(table, args.table or args.output.with_name(args.output.name + suffix))
    arguments = img2dataset_arguments(
        path, args.output, extra_columns=[c for c in table.columns if c not in ("url", "caption")],
        processes=args.processes, threads=args.threads, image_size=args.image_size,
        samples_per_shard=args.samples_per_shard, timeout=args.timeout)
    if args.table_only:
        skips = [f"skipped {count} rows: {reason}" for reason, count in skipped.most_common()]
        return "\n".join([f"wrote {len(table)} rows to {path}", *skips, img2dataset_command(arguments)])
    return download(arguments, skipped).summary()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(run(args))
    except (ValueError, FileExistsError, ImportError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
