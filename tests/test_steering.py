"""The steering diagnostic (src/open_clip_elip/steering.py): patch regions and shares against plain loops, exactly 0
for a selection that does not read the caption, not 0 for one that reads only the caption, and the command line on
real scenes shards."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY_ELIP, TINY_STOCK
from open_clip import create_model, create_model_and_transforms, get_tokenizer, tokenize

from open_clip_elip import scenes, steering
from open_clip_elip.families.mask import MaskCLIP
from open_clip_elip.leak import id_sets, kept_patch_ids
from open_clip_elip.steering import BACKGROUND, diagnose, main, patch_regions, region_shares, steering_of

BOXES = torch.tensor([[[0, 0, 12, 12], [16, 16, 28, 28]], [[20, 0, 32, 14], [2, 18, 16, 30]]], dtype=torch.float64)


def test_patch_regions_are_the_items_holding_each_patch_centre():
    regions = patch_regions(BOXES, grid=8, patch=4)
    for b in range(2):
        for p in range(64):
            y, x = (p // 8) * 4 + 2, (p % 8) * 4 + 2  # row-major patch centres
            left, top, right, bottom = BOXES[b].T
            holding = [k for k in range(2) if left[k] <= x < right[k] and top[k] <= y < bottom[k]]
            assert regions[b, p] == (holding[0] if holding else BACKGROUND)
    assert (regions[0] == 0).sum() == 9 and (regions[0] == 1).sum() == 9  # 12 px boxes: 3 x 3 centres each


def test_shares_and_steering_match_a_plain_count():
    regions = patch_regions(BOXES, grid=8, patch=4)
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.rand(2, 64, generator=generator) < 0.5 for _ in range(2))
    result = steering_of(first, second, regions)
    for b in range(2):
        def share(kept, item, b=b):
            ids = [p for p in range(64) if kept[b, p]]
            return sum(int(regions[b, p]) == item for p in ids) / len(ids)
        named = (share(first, 0) + share(second, 1)) / 2
        background = (share(first, BACKGROUND) + share(second, BACKGROUND)) / 2
        steering = ((share(first, 0) - share(second, 0)) + (share(second, 1) - share(first, 1))) / 2
        assert float(result["named"][b]) == pytest.approx(named)
        assert float(result["background"][b]) == pytest.approx(background)
        assert float(result["other"][b]) == pytest.approx(1 - named - background)
        assert float(result["steering"][b]) == pytest.approx(steering)
    same = steering_of(first, first, regions)["steering"]  # the same kept set under both captions
    assert torch.equal(same, torch.zeros(2, dtype=same.dtype))
    only_named = region_shares(regions == 0, regions, 0)
    assert only_named["named"].tolist() == [1.0, 1.0] and only_named["background"].tolist() == [0.0, 0.0]


def canvases(count=16, seed=0):
    """Random 32 px images with two item boxes each and captions naming each item."""
    images = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    boxes = BOXES.repeat(count // 2, 1, 1)
    names = ["sandal", "bag", "coat", "trouser"]
    first = tokenize([f"a photo of a {names[i % 4]}." for i in range(count)], context_length=16)
    second = tokenize([f"a photo of a {names[(i + 1) % 4]}." for i in range(count)], context_length=16)
    return images, boxes, first, second


def elip(**options):
    torch.manual_seed(3)
    return create_model(TINY_ELIP, elip_cfg=options).eval()


def test_a_selection_that_does_not_read_the_caption_steers_exactly_zero(tiny_configs):
    report = diagnose(elip(lam=1.0), *canvases(), batch_size=8)  # vision only: lam 1
    assert {k for k in report if k.startswith("steering")} == {"steering", "steering_b2", "steering_b3", "steering_b4"}
    assert all(report[k] == 0 for k in report if k.startswith("steering"))
    for b in ("_b2", "_b3", "_b4", ""):
        shares = [report[f"kept_{r}{b}"] for r in ("named", "other", "background")]
        assert sum(shares) == pytest.approx(100) and all(0 <= s <= 100 for s in shares)
        assert report[f"kept_named{b}"] != report[f"kept_background{b}"]


def test_a_selection_that_reads_only_the_caption_moves(tiny_configs):
    model = elip(lam=0.0, fusion="norm_matched")
    images, boxes, first, second = canvases()
    report = diagnose(model, images, boxes, first, second, batch_size=8)
    assert report["steering_b2"] != 0
    # against the trace, recomputed here: block 2's steering over the 16 canvases
    regions = patch_regions(boxes, 8, 4)
    with torch.no_grad():
        kept = [id_sets(kept_patch_ids(model.visual.trace(images, model.encode_text(t, normalize=True))[1])[0], 64)
                for t in (first, second)]
    expected = steering_of(*kept, regions)["steering"].mean().item() * 100
    assert report["steering_b2"] == pytest.approx(expected)
    assert report["steering"] == pytest.approx(np.mean([report[f"steering_b{b}"] for b in (2, 3, 4)]))


def test_errors_name_the_problem(tiny_configs):
    with pytest.raises(ValueError, match="needs a model that chooses tokens.*ELIP or -mask.*got CLIP"):
        diagnose(create_model(TINY_STOCK), *canvases())
    images, boxes, first, second = canvases()
    with pytest.raises(ValueError, match="differ in number: 16, 15"):
        diagnose(elip(), images, boxes[:15], first, second)


@pytest.fixture(scope="module")
def scene_shards(digit_idx, tmp_path_factory):
    """Two-item scenes canvases of 32 px (digits shrunk to 14 px)."""
    out = tmp_path_factory.mktemp("steering")
    shards = scenes.write_scene_shards(out / "heldout", "test", 24, 1, digit_idx, canvas=32, scale=(0.5, 0.5),
                                       shard_size=100)
    return out, f"{shards}/train-000000.tar"


def test_the_command_line_reads_scenes_shards_and_writes_the_json(tiny_configs, scene_shards, capsys):
    out, data = scene_shards
    torch.manual_seed(5)
    model = create_model(TINY_ELIP, elip_cfg={"lam": 0.0}).eval()
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, out / "epoch_1.pt")
    assert main(["--model", TINY_ELIP, "--pretrained", str(out / "epoch_1.pt"), "--data", data, "--samples", "24",
                 "--batch-size", "8", "--out", str(out / "steering.json")]) == 0
    written = json.loads((out / "steering.json").read_text())
    assert "steering" in capsys.readouterr().out
    # the same numbers from the shard read by hand: boxes of 14 px items, captions naming each item's class
    images, boxes, texts = shard_inputs(data, TINY_ELIP)
    assert ((boxes[:, :, 2] - boxes[:, :, 0]) == 14).all()
    loaded = create_model(TINY_ELIP).eval()  # by name: the config's own options, the checkpoint's weights
    loaded.load_state_dict(model.state_dict())
    assert written == pytest.approx(diagnose(loaded, images, boxes, *texts, batch_size=8))
    other_weights = steering.steering_report(TINY_ELIP, "", data, samples=24, batch_size=8)
    assert other_weights != pytest.approx(written)


# --- the -mask family: block 1, the patches a training forward keeps at the input --------------------------------

def tiny_mask(**mask_cfg):
    """A -mask model of the tiny config (32 px, patch 4: the canvases' 8 x 8 grid), untrained."""
    from conftest import tiny_config

    torch.manual_seed(3)
    return MaskCLIP(**tiny_config(False), mask_cfg=mask_cfg).eval()


@pytest.mark.parametrize("options", [{"strategy": "attentive"}, {"strategy": "random"}, {"strategy": "center"},
                                     {"strategy": "cluster"}, {"strategy": "attentive_text", "lam": 1.0}])
def test_a_mask_that_does_not_read_the_caption_steers_exactly_zero(options):
    report = diagnose(tiny_mask(**options), *canvases(), batch_size=8)
    assert {k for k in report if k.startswith("steering")} == {"steering", "steering_b1"}
    assert report["steering_b1"] == 0 and report["steering"] == 0
    shares = [report[f"kept_{r}_b1"] for r in ("named", "other", "background")]
    assert sum(shares) == pytest.approx(100) and all(0 <= s <= 100 for s in shares)
    assert report["kept_named"] == report["kept_named_b1"]


@pytest.mark.parametrize("scoring", ["similarity", "fused"])
def test_a_mask_that_reads_the_caption_steers_as_its_trace_says(scoring):
    model = tiny_mask(strategy="attentive_text", text_scoring=scoring, lam=0.0)
    images, boxes, first, second = canvases()
    report = diagnose(model, images, boxes, first, second, batch_size=8)
    assert report["steering_b1"] != 0
    regions = patch_regions(boxes, 8, 4)
    with torch.no_grad():  # the kept sets recomputed here from the trace, one caption set at a time
        kept = [id_sets(model.visual.trace(images, model.encode_text(t, normalize=True)), 64) for t in (first, second)]
    assert kept[0].sum(1).tolist() == [model.visual.num_keep] * 16
    expected = steering_of(*kept, regions)
    assert report["steering"] == pytest.approx(expected["steering"].mean().item() * 100)
    assert report["kept_background_b1"] == pytest.approx(expected["background"].mean().item() * 100)


def test_random_masks_draw_from_their_own_seed_and_leave_the_callers_state():
    model = tiny_mask(strategy="random")
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    first = diagnose(model, *canvases(), batch_size=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(12)
    assert first == diagnose(model, *canvases(), batch_size=8)  # seeded per batch, whatever the caller's state


def test_the_command_line_loads_a_stock_checkpoint_into_a_mask_model_with_options(tiny_configs, scene_shards, capsys):
    import open_clip
    from conftest import tiny_config

    out, data = scene_shards
    (out / "configs").mkdir(exist_ok=True)
    (out / "configs" / "ViT-Tiny-4-mask.json").write_text(json.dumps({**tiny_config(False), "mask_cfg": {}}))
    open_clip.add_model_config(out / "configs")
    torch.manual_seed(7)
    stock = create_model(TINY_STOCK)
    torch.save({"epoch": 1, "state_dict": stock.state_dict()}, out / "stock.pt")
    options = {"strategy": "attentive_text", "text_scoring": "fused", "lam": 0.0}
    assert main(["--model", "ViT-Tiny-4-mask", "--pretrained", str(out / "stock.pt"), "--data", data,
                 "--samples", "24", "--batch-size", "8", "--options", json.dumps(options),
                 "--out", str(out / "mask.json")]) == 0
    written = json.loads((out / "mask.json").read_text())
    # by hand: the stock weights in a -mask model with those options, its EMA tower a copy of the image tower
    model = MaskCLIP(**tiny_config(False), mask_cfg=options).eval()
    model.load_state_dict(stock.state_dict())  # strict: the EMA tower starts from the image tower
    assert all(torch.equal(p, q) for p, q in zip(model.visual_ema.parameters(), stock.visual.parameters()))
    images, boxes, texts = shard_inputs(data, "ViT-Tiny-4-mask")
    assert written == pytest.approx(diagnose(model, images, boxes, *texts, batch_size=8))
    assert written["steering"] != 0
    capsys.readouterr()
    assert main(["--model", TINY_STOCK, "--data", data, "--options", '{"lam": 0}']) == 2
    assert "has no family config block" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "ViT-Tiny-4-mask", "--data", data, "--options", "[1]"])
    assert "--options must be a JSON object" in capsys.readouterr().err


def shard_inputs(data, model_name):
    """Preprocessed images, boxes and the two caption sets of a scenes shard, read by hand."""
    import webdataset as wds

    from open_clip_elip.fashion_mnist import captions

    _, _, preprocess = create_model_and_transforms(model_name)
    samples = list(wds.WebDataset(data, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "json"))
    labels = np.asarray([m["labels"] for _, m in samples])
    tokenizer = get_tokenizer(model_name)
    texts = [tokenizer(captions(labels[:, k], seed=0)) for k in (0, 1)]
    images = torch.stack([preprocess(image) for image, _ in samples])
    boxes = torch.tensor([m["boxes"] for _, m in samples], dtype=torch.float64)
    return images, boxes, texts
