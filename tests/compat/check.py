"""The compatibility lane's check (``tests/compat/lane.sh`` runs it in a venv holding one OpenCLIP release and this
package, installed): registration; each family's unguided output against stock and its state dict loading strictly
both ways; a guided training step of each family; two steps of that release's trainer per family; and, where the
trainer has ``--fsdp`` (OpenCLIP main), each family under FSDP2 in two CPU processes, with and without
``--grad-checkpointing``, against the unsharded run's losses. Prints one line per check; exits non-zero on the
first failure."""
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="open_clip_elip-compat-"))
TINY = "ViT-Tiny-4"
FAMILY_BLOCKS = {
    "elip": {"elip_cfg": {"layout": [1, 1, 1, 1], "keep_ratios": [0.9, 0.65, 0.4]}},
    "evit": {"evit_cfg": {"keep_rate": 0.7, "prune_layers": [1, 2]}},
    "tome": {"tome_cfg": {"r": 8}},
    "mask": {"mask_cfg": {"strategy": "center"}},
}
NO_OP = {"elip": {}, "evit": {"evit_cfg": {"keep_rate": 1.0}}, "tome": {"tome_cfg": {"r": 0}},
         "mask": {"mask_cfg": {"keep_ratio": 1.0}}}
STOCK_IN_EVAL = ("elip", "mask")  # their eval-mode forward without a caption is the stock one
FSDP_FAMILIES = ("elip", "evit", "tome")  # -mask draws its masks per sample: shards draw other masks than one process
TEARDOWN = "terminate called without an active exception"  # seen once on main, after all epochs, at process exit
LOSS = re.compile(r"(\w*[Ll]oss): ([0-9.eE+-]+) \(")


def tiny_config() -> dict:
    """32 px, patch 4: 64 patches + CLS; 4 layers of width 64 (as tests/conftest.py)."""
    return {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 32, "patch_size": 4},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def write_configs() -> Path:
    folder = WORK / "model_configs"
    folder.mkdir()
    (folder / f"{TINY}.json").write_text(json.dumps(tiny_config()))
    for family, block in FAMILY_BLOCKS.items():
        (folder / f"{TINY}-{family}.json").write_text(json.dumps({**tiny_config(), **block}))
    return folder


os.environ["OPEN_CLIP_ELIP_CONFIGS"] = str(write_configs())  # before open_clip registers (its start-up hook)

import open_clip  # noqa: E402
import torch  # noqa: E402

import open_clip_elip  # noqa: E402
from open_clip_elip.core import openclip  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights loaded" for each tiny model


def ok(message: str) -> None:
    print(f"ok   {message}", flush=True)


def fail(message: str) -> None:
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def expect(condition: bool, message: str) -> None:
    ok(message) if condition else fail(message)


def check_registration() -> None:
    expect(openclip.check() == [], f"core.openclip.check() passes on OpenCLIP {openclip.VERSION}")
    models = set(open_clip.list_models())
    expect({"ViT-B-16-elip", "ViT-B-16-evit", "ViT-B-16-tome", "ViT-B-16-mask"} <= models,
           "the -elip/-evit/-tome/-mask twins are registered")
    classes = {family: type(open_clip.create_model(f"{TINY}-{family}")).__name__ for family in FAMILY_BLOCKS}
    expect(classes == {"elip": "ElipCLIP", "evit": "EvitCLIP", "tome": "TomeCLIP", "mask": "MaskCLIP"},
           f"create_model builds {classes}")
    expect(type(open_clip.create_model(TINY)) is openclip.CLIP, "a stock config still builds the stock CLIP")


def check_outputs_and_state_dicts() -> None:
    images = torch.randn(4, 3, 32, 32)
    for family in FAMILY_BLOCKS:
        torch.manual_seed(0)
        stock = open_clip.create_model(TINY).eval()
        model = open_clip.create_model(f"{TINY}-{family}").eval()
        model.load_state_dict(stock.state_dict(), strict=True)
        other = open_clip.create_model(TINY)
        other.load_state_dict(model.state_dict(), strict=True)
        expect(all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), stock.state_dict().values())),
               f"{family}: state dicts load strictly both ways")
        no_op = open_clip.create_model(f"{TINY}-{family}", **NO_OP[family]).eval()
        no_op.load_state_dict(stock.state_dict(), strict=True)
        with torch.no_grad():
            want, got = stock.encode_image(images), no_op.encode_image(images)
            reduced = model.encode_image(images)
        if family in STOCK_IN_EVAL:  # unguided, in eval mode: the stock forward itself
            expect(torch.equal(got, want) and torch.equal(reduced, want),
                   f"{family}: unguided eval output equals stock, bit for bit")
        else:
            expect(torch.allclose(got, want, atol=1e-5), f"{family}: output without reduction ({NO_OP[family]}) "
                                                         "equals stock")
            expect(not torch.allclose(reduced, want, atol=1e-3), f"{family}: reduced output differs from stock")


def check_training_steps() -> None:
    tokenizer = open_clip.get_tokenizer(TINY)
    loss_fn = open_clip.ClipLoss()
    torch.manual_seed(0)
    images, texts = torch.randn(4, 3, 32, 32), tokenizer([f"a photo of the digit {i}" for i in range(4)])
    for family in FAMILY_BLOCKS:
        torch.manual_seed(0)
        stock = open_clip.create_model(TINY)
        model = open_clip.create_model(f"{TINY}-{family}")
        model.load_state_dict(stock.state_dict())
        for m in (stock, model):
            m.train()
        losses = {}
        for name, m in (("stock", stock), (family, model)):
            out = m(images, texts)
            losses[name] = loss_fn(out[0], out[1], out[2])
        losses[family].backward()
        grads = [p.grad for p in openclip.blocks(model.visual).parameters()]
        expect(all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads),
               f"{family}: a guided training step gives finite gradients to every vision block")
        expect(not torch.allclose(losses[family], losses["stock"]), f"{family}: the guided loss "
               f"{losses[family].item():.5f} is not stock's {losses['stock'].item():.5f} (tokens were reduced)")
        before = [p.detach().clone() for p in model.parameters()]
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        expect(any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), f"{family}: the step moves "
                                                                                      "the weights")


def write_shards(count: int = 2, per_shard: int = 8) -> str:
    """``count`` webdataset shards of digits (sklearn), 32 px RGB, as tests/conftest.py makes them."""
    import numpy as np
    import webdataset as wds
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    folder = WORK / "shards"
    folder.mkdir()
    for shard in range(count):
        with wds.TarWriter(str(folder / f"train-{shard:06d}.tar")) as sink:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                image = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8))
                buffer = io.BytesIO()
                image.resize((32, 32), Image.NEAREST).convert("RGB").save(buffer, format="JPEG")
                sink.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(),
                            "txt": f"a photo of the digit {names[digits.target[i]]}"})
    return str(folder / f"train-{{000000..{count - 1:06d}}}.tar")


def trainer(name: str, model: str, shards: str, batch: int, epochs: int, extra=(), ranks: int = 1) -> list:
    """OpenCLIP's trainer on CPU (``ranks`` processes under torchrun, gloo); the losses it logged, per step."""
    launch = [sys.executable, "-m", "open_clip_train.main"]
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                  "--master_port", str(29500 + abs(hash(name)) % 1000), "-m", "--", "open_clip_train.main"]
    command = launch + [
        "--model", model, "--train-data", shards, "--train-num-samples", "16", "--dataset-type", "webdataset",
        "--batch-size", str(batch), "--epochs", str(epochs), "--workers", "0", "--device", "cpu",
        "--logs", str(WORK / "logs"), "--name", name, "--lr", "1e-2", "--warmup", "1", "--seed", "0",
        "--log-every-n-steps", "1", "--save-frequency", "0", "--aug-cfg", "scale=(1.0,1.0)", "--precision", "fp32",
        *extra]
    run = subprocess.run(command, capture_output=True, text=True, cwd=WORK, timeout=600)
    log_path = WORK / "logs" / name / "out.log"  # rank 0's
    if run.returncode != 0:
        finished = log_path.exists() and f"End epoch {epochs - 1} " in log_path.read_text()
        if ranks > 1 and finished and TEARDOWN in run.stderr:  # every epoch trained and logged, then a crash at exit
            print(f"--   {name}: a rank aborted at exit after the last epoch ({TEARDOWN!r}, torch's CPU process "
                  "group tearing down); its losses are read", flush=True)
        else:
            print((run.stdout + run.stderr)[-6000:])
            fail(f"trainer {' '.join(command[2:])} exited with {run.returncode}")
    log = log_path.read_text()
    return [float(LOSS.findall(line)[-1][1]) for line in log.splitlines() if "Train Epoch" in line]  # the total


def check_trainer(shards: str) -> None:
    for family in FAMILY_BLOCKS:
        losses = trainer(f"two-steps-{family}", f"{TINY}-{family}", shards, batch=8, epochs=1)
        expect(len(losses) == 2 and all(math.isfinite(v) for v in losses),
               f"{family}: two steps of open_clip_train.main, losses {losses}")


def check_fsdp(shards: str) -> None:
    """FSDP2 in two processes (8 samples each) against one unsharded process (16): every epoch is one step over all
    16 samples (uncropped: ``scale=(1, 1)``), so each step's contrastive loss is the same up to float rounding."""
    for family in FSDP_FAMILIES:
        model = f"{TINY}-{family}"
        reference = trainer(f"unsharded-{family}", model, shards, batch=16, epochs=3)
        expect(len(reference) == 3, f"{family}: unsharded losses {reference}")
        for extra in ((), ("--grad-checkpointing",)):
            name = f"fsdp-{family}{''.join(extra)}"
            sharded = trainer(name, model, shards, batch=8, epochs=3, extra=("--fsdp", *extra), ranks=2)
            close = len(sharded) == 3 and all(abs(a - b) <= 2e-4 * abs(b) + 1e-4 for a, b in zip(sharded, reference))
            expect(close, f"{family}: --fsdp {' '.join(extra)} over 2 processes, losses {sharded} = unsharded "
                          f"{reference}")


def main() -> None:
    print(f"compat check: open_clip {openclip.VERSION}, open_clip_elip {open_clip_elip.__version__}, "
          f"torch {torch.__version__}", flush=True)
    check_registration()
    check_outputs_and_state_dicts()
    check_training_steps()
    shards = write_shards()
    check_trainer(shards)
    import open_clip_train.params as params

    if "--fsdp" in Path(params.__file__).read_text():
        check_fsdp(shards)
    else:
        print(f"--   no --fsdp in open_clip_train {openclip.VERSION}: FSDP not checked", flush=True)
    shutil.rmtree(WORK)
    print("compat check: all passed", flush=True)


if __name__ == "__main__":
    main()
