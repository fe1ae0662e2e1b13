"""Shared fixtures: a tiny stock/ELIP config pair and a tiny webdataset shard, both made here."""
import io
import json
import math
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

import open_clip_elip
from open_clip_elip.core import openclip
from open_clip_elip.core.registration import EXTRA_CONFIGS_ENV

TINY_ELIP = "ViT-Tiny-4-elip"
TINY_STOCK = "ViT-Tiny-4"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_config(elip: bool) -> dict:
    """32 px, patch 4: 64 patches + CLS = 65 tokens; 4 layers, one per ELIP block."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 32, "patch_size": 4},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    if elip:
        cfg["elip_cfg"] = {"layout": [1, 1, 1, 1], "keep_ratios": [0.9, 0.65, 0.4]}
    return cfg


@pytest.fixture(scope="session")
def tiny_configs(tmp_path_factory):
    """Folder with the tiny configs, registered here and (through the env var) in subprocesses."""
    folder = tmp_path_factory.mktemp("model_configs")
    for name, elip in ((TINY_ELIP, True), (TINY_STOCK, False)):
        (folder / f"{name}.json").write_text(json.dumps(tiny_config(elip)))
    os.environ[EXTRA_CONFIGS_ENV] = str(folder)
    open_clip_elip.register()
    return folder


def digit_samples(count: int, size: int = 32):
    """(PIL image, caption, label) from scikit-learn's digits, upscaled to ``size`` px RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.NEAREST).convert("RGB")
        label = int(digits.target[i])
        yield image, f"a photo of the digit {DIGIT_NAMES[label]}", label


@pytest.fixture(scope="session")
def tiny_shard(tmp_path_factory):
    """One webdataset shard of 64 jpg/txt/json samples, OpenCLIP's training format."""
    folder = tmp_path_factory.mktemp("shards")
    path = folder / "train-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i, (image, caption, label) in enumerate(digit_samples(64)):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG")
            sink.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(), "txt": caption,
                        "json": {"label": label}})
    return path


@pytest.fixture(scope="session")
def digit_idx(tmp_path_factory):
    """An MNIST-format folder (train and t10k, 200 items each) of scikit-learn's digits upscaled to 28 px."""
    import gzip

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((28, 28)))
                       for d in digits.images[:200]])
    folder = tmp_path_factory.mktemp("idx")
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", images), ("labels-idx1", digits.target[:200])):
            header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    return folder


def reference_attention_probs(block, h):
    """The attention probabilities of ``block`` on normalised tokens ``h`` (``B x N x W``), averaged over heads,
    one head at a time from the block's own weights (as ``nn.MultiheadAttention(need_weights=True)`` of OpenCLIP
    3.x gave them; OpenCLIP main's ``Attention`` has no such option): ``B x N x N``."""
    weight, bias = openclip.attention_in_proj(block)
    width, heads = h.shape[-1], openclip.attention_heads(block)
    dim = width // heads
    q, k = (h @ weight[i * width:(i + 1) * width].T + bias[i * width:(i + 1) * width] for i in range(2))
    probs = [torch.softmax(q[..., j * dim:(j + 1) * dim] @ k[..., j * dim:(j + 1) * dim].transpose(-1, -2)
                           / math.sqrt(dim), dim=-1) for j in range(heads)]
    return sum(probs) / heads
