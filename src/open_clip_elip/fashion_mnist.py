"""Fashion-MNIST (70k 28x28 grayscale images, 10 classes, MIT licence) for the offline demo.

``load_split`` reads the IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) and falls back to torchvision's download into a cache
folder. ``write_train_shards`` turns a split into OpenCLIP's webdataset training format
(``jpg``/``txt`` samples and a ``sizes.json``), captioning every image from a prompt template.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import webdataset as wds
from PIL import Image

from .shards import write_sizes

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "open_clip_elip" / "fashion-mnist"
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TEMPLATES = [
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of the {c}.",
    "a grayscale photo of a {c}.",
    "a photo of the small {c}.",
    "a cropped photo of a {c}.",
    "a product photo of a {c}.",
    "a blurry photo of the {c}.",
]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a numpy array (uint8 data, big-endian dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_idx_files(split: str, root: "Path | None" = None) -> Tuple[Path, Path]:
    """Paths of the images and labels IDX files of ``split``, from ``root``, Debian or the cache.

    Downloads with torchvision into ``CACHE_DIR`` when no local copy exists.
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"Fashion-MNIST split must be one of {list(SPLIT_PREFIX)}, got {split!r}")
    prefix = SPLIT_PREFIX[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    folders = [Path(root)] if root else [DEBIAN_DIR, CACHE_DIR / "FashionMNIST" / "raw"]
    for folder in folders:
        for suffix in (".gz", ""):
            paths = tuple(folder / (name + suffix) for name in names)
            if all(p.exists() for p in paths):
                return paths
    if root:
        raise FileNotFoundError(f"no Fashion-MNIST {split} files ({names[0]}[.gz], {names[1]}[.gz]) in {root}")
    download(CACHE_DIR)
    return find_idx_files(split, CACHE_DIR / "FashionMNIST" / "raw")


def download(folder: Path) -> None:
    """Fetch Fashion-MNIST with torchvision (needs internet), with a clear message when it cannot."""
    print(f"Fashion-MNIST is not installed in {DEBIAN_DIR}; downloading it with torchvision into {folder}")
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(folder), train=train, download=True)
    except Exception as exc:
        raise RuntimeError(
            f"Fashion-MNIST is neither installed nor downloadable ({type(exc).__name__}: {exc}). Install the "
            "Debian package (`apt-get install dataset-fashion-mnist`, part of `make install`) or copy the four "
            f"*-ubyte.gz files into {folder / 'FashionMNIST' / 'raw'}") from exc


def load_split(split: str, root: "Path | None" = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images N x 28 x 28 uint8, labels N int64)`` of the ``train`` (60k) or ``test`` (10k) split."""
    image_path, label_path = find_idx_files(split, root)
    images, labels = read_idx(image_path), read_idx(label_path).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{image_path} and {label_path} do not hold matching images and labels")
    return images, labels


def to_pil(images: np.ndarray) -> list:
    """Grayscale uint8 arrays as RGB PIL images (OpenCLIP and clip_benchmark decode to RGB anyway)."""
    return [Image.fromarray(image).convert("RGB") for image in images]


def captions(labels: np.ndarray, seed: int, templates: Sequence[str] = TEMPLATES,
             classnames: Sequence[str] = CLASSNAMES) -> list:
    """One caption per label, from a template drawn at random (seeded)."""
    picks = np.random.default_rng(seed).integers(len(templates), size=len(labels))
    return [templates[t].format(c=classnames[label]) for t, label in zip(picks, labels)]


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_train_shards(images: np.ndarray, labels: np.ndarray, folder: Path, seed: int = 0,
                       shard_size: int = 5000) -> Path:
    """Write OpenCLIP training shards (``jpg`` and ``txt``) and ``sizes.json`` into ``folder``.

    The shards are built in a sibling ``.partial`` folder renamed into place once complete, so an
    existing ``folder`` always holds a finished build.
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists already: use its shards, or remove it to rebuild them")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with wds.ShardWriter(str(partial / "train-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, (image, caption) in enumerate(zip(images, captions(labels, seed))):
            sink.write({"__key__": f"{i:06d}", "jpg": jpeg_bytes(image), "txt": caption})
    write_sizes(partial)
    partial.rename(folder)
    return folder


def shard_pattern(folder: Path) -> str:
    """The brace pattern of the shards in ``folder`` for ``--train-data``."""
    sizes = json.loads((Path(folder) / "sizes.json").read_text())
    return str(Path(folder) / f"train-{{000000..{len(sizes) - 1:06d}}}.tar")
