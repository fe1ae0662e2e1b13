"""The leak diagnostic (src/open_clip_elip/leak.py) on the tiny models and the tiny shard."""
import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch
import torch.nn.functional as F
from conftest import DIGIT_NAMES, TINY_ELIP, TINY_STOCK, tiny_config
from open_clip import create_model, create_model_and_transforms, get_tokenizer, tokenize
from PIL import Image

from open_clip_elip.leak import derangement, diagnose, kept_patch_ids, leak_report, main, overlap

BLOCKS = (2, 3, 4)
KEYS = {f"{name}_{c}" for name in ("top1", "loss") for c in ("unguided", "own", "shuffled")} | {
    "leak_top1", "leak_loss", "norm_text_term", "norm_cls_term"} | {
    f"{name}_b{b}" for b in BLOCKS
    for name in ("overlap_own_shuffled", "overlap_own_vision", "norm_text_term", "norm_cls_term")}
DEEP_VISION = {**tiny_config(True)["vision_cfg"], "layers": 6}  # blocks of 1/2/2/1 layers: a real look-ahead


def tiny_model(seed=0, deep=False, **elip_options):
    torch.manual_seed(seed)
    if deep:
        elip_options = {"layout": [1, 2, 2, 1], **elip_options}
        return create_model(TINY_ELIP, vision_cfg=DEEP_VISION, elip_cfg=elip_options).eval()
    return create_model(TINY_ELIP, elip_cfg=elip_options).eval()


def pairs(count, seed=0):
    """Random images and digit captions (each repeated within a batch: retrieval must compare strings)."""
    images = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    captions = [f"a photo of the digit {DIGIT_NAMES[(i * 7) % 10]}" for i in range(count)]
    return images, tokenize(captions, context_length=16), captions


def run(model, count=64, batch_size=32, seed=0, data_seed=0):
    images, texts, captions = pairs(count, data_seed)
    return diagnose(model, images, texts, captions, batch_size=batch_size, seed=seed)


# --- helpers ----------------------------------------------------------------------------------------------

def test_derangement_has_no_fixed_point():
    for n in range(2, 12):
        drawn = set()
        for seed in range(6):
            perm = derangement(n, torch.Generator().manual_seed(seed))
            assert sorted(perm.tolist()) == list(range(n))
            assert all(perm[i] != i for i in range(n)), perm
            assert torch.equal(perm, derangement(n, torch.Generator().manual_seed(seed)))  # seeded
            drawn.add(tuple(perm.tolist()))
        assert n == 2 or len(drawn) > 1  # random, not one fixed shift
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, torch.Generator())


def test_overlap_counts_original_patches_only():
    a = torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1], [4, 5, 6, -1]])
    b = torch.tensor([[3, 2, 1, 0], [5, -1, 7, 8], [4, 5, 7, 8]])
    assert overlap(a, b, 10).tolist() == [1.0, 1 / 3, 2 / 3]  # a merged token (-1) is in no set; |A| counts
    assert overlap(a, torch.tensor([[4, 5, 6, 7], [0, 1, 2, 3], [0, 1, 2, 3]]), 10).tolist() == [0.0, 0.0, 0.0]


def test_kept_patch_ids_follow_the_provenance(tiny_configs):
    model = tiny_model(seed=1, lam=0.8)
    images, texts, _ = pairs(4)
    with torch.no_grad():
        _, trace = model.visual.trace(images, model.encode_text(texts, normalize=True))
    ids = kept_patch_ids(trace)
    assert [tuple(i.shape) for i in ids] == [(4, 58), (4, 42), (4, 26)]
    assert torch.equal(ids[0], trace[0].keep_index)  # entering block II every token is an original patch
    merged_kept = 0
    for block_ids, step in zip(ids, trace):
        rows = step.provenance[:, :block_ids.shape[1]]  # the kept tokens' weights over the original patches
        one_hot = (rows == 1).sum(-1) == 1
        one_hot &= (rows != 0).sum(-1) == 1
        assert torch.equal(one_hot, block_ids >= 0)  # id -1 exactly where a kept token is a merged one
        assert torch.equal(rows.argmax(-1)[one_hot], block_ids[one_hot])
        merged_kept += int((block_ids == -1).sum())
    assert merged_kept > 0, "no merged token was kept: the example would not test the -1 ids"


# --- diagnose ---------------------------------------------------------------------------------------------

def test_report_keys_and_types(tiny_configs):
    report = run(tiny_model())
    assert set(report) == KEYS
    assert all(type(value) is float for value in report.values())
    json.dumps(report)
    for key, value in report.items():
        if key.startswith(("top1", "overlap")):
            assert 0.0 <= value <= 100.0, key
    assert report["leak_top1"] == report["top1_own"] - report["top1_unguided"]
    assert report["leak_loss"] == report["loss_unguided"] - report["loss_own"]
    assert report["norm_text_term"] == pytest.approx(sum(report[f"norm_text_term_b{b}"] for b in BLOCKS) / 3)
    assert report["norm_cls_term"] == pytest.approx(sum(report[f"norm_cls_term_b{b}"] for b in BLOCKS) / 3)


def test_vision_only_scoring_makes_the_caption_irrelevant(tiny_configs):
    report = run(tiny_model(lam=1.0))
    assert report["top1_own"] == report["top1_shuffled"]
    assert report["loss_own"] == report["loss_shuffled"]
    for b in BLOCKS:
        assert report[f"overlap_own_shuffled_b{b}"] == 100.0
        assert report[f"overlap_own_vision_b{b}"] == 100.0
        assert report[f"norm_text_term_b{b}"] == 0.0
        assert report[f"norm_cls_term_b{b}"] > 1.0


def test_text_only_scoring_selects_by_the_caption(tiny_configs):
    report = run(tiny_model(lam=0.0))
    for b in BLOCKS:  # a random-init model: captions move some tokens, more in later blocks
        assert report[f"overlap_own_shuffled_b{b}"] < 100.0
        assert report[f"overlap_own_vision_b{b}"] < 100.0
        assert report[f"norm_cls_term_b{b}"] == 0.0
        assert report[f"norm_text_term_b{b}"] > 0.0
    assert report["overlap_own_shuffled_b4"] < report["overlap_own_shuffled_b2"]
    assert report["loss_own"] != report["loss_shuffled"]


def test_the_numbers_equal_a_plain_computation_and_the_stock_model(tiny_configs):
    model = tiny_model(seed=3, lam=0.5)
    stock = create_model(TINY_STOCK).eval()
    stock.load_state_dict(model.state_dict(), strict=True)
    images, texts, captions = pairs(70, seed=1)  # 2 full batches of 32; the last 6 pairs are left out
    report = diagnose(model, images, texts, captions, batch_size=32, seed=5)

    generator = torch.Generator().manual_seed(5)
    correct, losses = {"unguided": 0, "own": 0, "shuffled": 0}, {"unguided": 0.0, "own": 0.0, "shuffled": 0.0}
    with torch.no_grad():
        for start in (0, 32):
            image, caption = images[start:start + 32], captions[start:start + 32]
            text = stock.encode_text(texts[start:start + 32], normalize=True)
            guides = {"unguided": None, "own": text, "shuffled": text[derangement(32, generator)]}
            for condition, guide in guides.items():
                if guide is None:
                    features = stock.encode_image(image, normalize=True)  # the stock model, unguided
                else:
                    features = model.encode_image(image, normalize=True, text_features=guide)
                logits = model.logit_scale.exp() * features @ text.T
                for i in range(32):
                    correct[condition] += caption[int(logits[i].argmax())] == caption[i]
                labels = torch.arange(32)
                losses[condition] += float(F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    for condition in correct:
        assert report[f"top1_{condition}"] == pytest.approx(100 * correct[condition] / 64), condition
        assert report[f"loss_{condition}"] == pytest.approx(losses[condition] / 2, rel=1e-5), condition


def test_retrieval_compares_caption_strings(tiny_configs):
    images, texts, _ = pairs(32)
    same = ["a photo of the digit one"] * 32  # every retrieval finds the right caption, whichever row it picks
    report = diagnose(tiny_model(), images, tokenize(same, context_length=16), same, batch_size=32)
    assert report["top1_unguided"] == report["top1_own"] == report["top1_shuffled"] == 100.0


@pytest.mark.parametrize("fusion", ["paper", "norm_matched"])
@pytest.mark.parametrize("deep", [False, True], ids=["one_layer_blocks", "lookahead_through_a_layer"])
def test_norms_of_the_fused_terms(tiny_configs, fusion, deep):
    """Keep ratios 1: nothing is pruned, so the CLS entering block b is the stock tower's after its layers."""
    model = tiny_model(seed=4, deep=deep, lam=0.3, fusion=fusion, keep_ratios=[1.0, 1.0, 1.0])
    images, texts, captions = pairs(32)
    report = diagnose(model, images, texts, captions, batch_size=16)
    visual = model.visual
    with torch.no_grad():
        t_w = model.encode_text(texts, normalize=True) @ visual.proj.T
        x = visual.ln_pre(torch.cat([visual.class_embedding.expand(32, 1, -1),
                                     visual.conv1(images).flatten(2).transpose(1, 2)], 1) + visual.positional_embedding)
        cls_norms, layer = {}, 0
        for b, n_layers in enumerate(visual.elip_cfg.layout, start=1):
            cls_norms[b] = x[:, 0].norm(dim=-1)
            for _ in range(n_layers):
                x = visual.transformer.resblocks[layer](x)
                layer += 1
    for b in BLOCKS:
        assert report[f"overlap_own_shuffled_b{b}"] == report[f"overlap_own_vision_b{b}"] == 100.0
        assert report[f"norm_cls_term_b{b}"] == pytest.approx(0.3 * float(cls_norms[b].mean()), rel=1e-5)
        text_norms = cls_norms[b] if fusion == "norm_matched" else t_w.norm(dim=-1)
        assert report[f"norm_text_term_b{b}"] == pytest.approx(0.7 * float(text_norms.mean()), rel=1e-5)


def test_other_row_models_are_diagnosed_with_their_own_pairing(tiny_configs):
    paired, other = run(tiny_model(lam=0.0)), run(tiny_model(lam=0.0, caption_pairing="other_row"))
    assert paired["top1_unguided"] == other["top1_unguided"]  # the same weights
    assert paired["loss_own"] != other["loss_own"]


def test_diagnose_rejects_bad_input(tiny_configs):
    images, texts, captions = pairs(16)
    with pytest.raises(ValueError, match="no full batch of 32"):
        diagnose(tiny_model(), images, texts, captions, batch_size=32)
    with pytest.raises(ValueError, match="at least 2"):
        diagnose(tiny_model(), images, texts, captions, batch_size=1)
    with pytest.raises(ValueError, match="differ in number"):
        diagnose(tiny_model(), images, texts, captions[:-1], batch_size=8)
    with pytest.raises(ValueError, match="needs an ELIP model.*CLIP"):
        diagnose(create_model(TINY_STOCK), images, texts, captions, batch_size=8)


# --- leak_report and the command line ---------------------------------------------------------------------

def shard_pairs(path, count):
    """The shard's first ``count`` (PIL image, caption), read with tarfile."""
    members = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    keys = sorted(members)[:count]
    return [(Image.open(io.BytesIO(members[k]["jpg"])).convert("RGB"), members[k]["txt"].decode()) for k in keys]


@pytest.fixture(scope="module")
def checkpoint(tiny_configs, tmp_path_factory):
    model = tiny_model(seed=7)  # the config's own options: leak_report builds the model by name
    path = tmp_path_factory.mktemp("leak") / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def shard_report(tiny_shard, checkpoint):
    """leak_report on the shard's first 50 pairs in batches of 16: the first 48 are used."""
    return leak_report(TINY_ELIP, str(checkpoint[1]), str(tiny_shard), samples=50, batch_size=16, seed=2)


def test_leak_report_loads_the_checkpoint_and_reads_the_shard(tiny_configs, tiny_shard, checkpoint, shard_report):
    model, path = checkpoint
    _, _, preprocess = create_model_and_transforms(TINY_ELIP)
    read = shard_pairs(tiny_shard, 48)  # 3 full batches of 16
    images = torch.stack([preprocess(image) for image, _ in read])
    captions = [caption for _, caption in read]
    texts = get_tokenizer(TINY_ELIP)(captions)
    expected = diagnose(model, images, texts, captions, batch_size=16, seed=2)
    assert shard_report == pytest.approx(expected, rel=1e-6, abs=1e-9)
    other_weights = diagnose(tiny_model(seed=0), images, texts, captions, batch_size=16, seed=2)
    assert other_weights["loss_unguided"] != pytest.approx(expected["loss_unguided"])  # the numbers need the file's
    with pytest.raises(ValueError, match="no full batch of 16"):
        leak_report(TINY_ELIP, str(path), str(tiny_shard), samples=15, batch_size=16)


def test_leak_report_rejects_a_model_without_elip(tiny_configs, tiny_shard):
    with pytest.raises(ValueError, match=f"{TINY_STOCK} is not an ELIP model.*CLIP"):
        leak_report(TINY_STOCK, "", str(tiny_shard), samples=32, batch_size=16)


def test_main_reports_errors(tiny_configs, tiny_shard, capsys):
    assert main(["--model", TINY_STOCK, "--data", str(tiny_shard), "--samples", "32", "--batch-size", "16"]) == 2
    assert "not an ELIP model" in capsys.readouterr().err


def test_command_line_writes_the_json_and_prints_the_table(tiny_configs, tiny_shard, checkpoint, shard_report,
                                                           tmp_path):
    _, path = checkpoint
    out = tmp_path / "leak" / "leak.json"
    result = subprocess.run(
        [sys.executable, "-m", "open_clip_elip.leak", "--model", TINY_ELIP, "--pretrained", str(path),
         "--data", str(tiny_shard), "--samples", "48", "--batch-size", "16", "--seed", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report) == KEYS
    assert report == pytest.approx(shard_report)
    lines = result.stdout.splitlines()
    for condition in ("unguided", "own", "shuffled"):
        row = next(line for line in lines if line.startswith(condition))
        assert f"{report[f'top1_{condition}']:.2f}" in row and f"{report[f'loss_{condition}']:.4f}" in row
    for b in BLOCKS:
        row = next(line for line in lines if line.split()[:1] == [str(b)])
        assert f"{report[f'overlap_own_shuffled_b{b}']:.2f}" in row
    assert f"wrote {out}" in result.stdout
