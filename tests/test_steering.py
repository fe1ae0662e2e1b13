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
    with pytest.raises(ValueError, match="needs a model that chooses tokens.*got CLIP"):
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
    import webdataset as wds

    _, _, preprocess = create_model_and_transforms(TINY_ELIP)
    samples = list(wds.WebDataset(data, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "json"))
    assert all((np.diff(np.asarray(m["boxes"])[:, ::2], axis=1) == 14).all() for _, m in samples)
    from open_clip_elip.fashion_mnist import captions

    labels = np.asarray([m["labels"] for _, m in samples])
    tokenizer = get_tokenizer(TINY_ELIP)
    texts = [tokenizer(captions(labels[:, k], seed=0)) for k in (0, 1)]
    images = torch.stack([preprocess(image) for image, _ in samples])
    boxes = torch.tensor([m["boxes"] for _, m in samples], dtype=torch.float64)
    loaded = create_model(TINY_ELIP).eval()  # by name: the config's own options, the checkpoint's weights
    loaded.load_state_dict(model.state_dict())
    assert written == pytest.approx(diagnose(loaded, images, boxes, *texts, batch_size=8))
    other_weights = steering.steering_report(TINY_ELIP, "", data, samples=24, batch_size=8)
    assert other_weights != pytest.approx(written)
