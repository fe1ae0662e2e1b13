"""The efficiency benchmark and the EViT baseline, on the tiny configs (no timing assertions)."""
import json

import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ELIP, TINY_STOCK, reference_attention_probs

from open_clip_elip import FAMILIES, bench
from open_clip_elip.core import openclip
from open_clip_elip.core.towers import embed
from open_clip_elip.families.evit import apply_evit, evit_prune_layers

BUDGET = 6 * 2 ** 20  # saved-activation bytes for the capacity mode: a few tiny images
FIRST_LAYER, EVIT = "elip first_layer", "evit"


def train_methods():
    """Every registered family (core.registry, read when the test runs) with its training variants."""
    return [bench.STOCK, *(name for f in FAMILIES.values() for name in
                           [f.name, *(v.name for v in f.variants if v.mode == bench.TRAIN)]),
            bench.RANDOM, bench.AUTHORS]


def infer_methods():
    return [bench.STOCK, *(v.name for f in FAMILIES.values() for v in f.variants if v.mode == bench.INFER)]
COLUMNS = ["method", "mode", "removed_tokens", "gflops", "gflops_predicted", "gflops_deviation_pct",
           "saved_bytes_per_image", "saved_ratio", "peak_mib", "time_ratio", "cpu_time_ratio", "time_ms"]


@pytest.fixture(scope="module")
def bench_run(tiny_configs, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("bench") / "tiny")
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops on a shared CPU would wait on each other's threads
        report = bench.main(["--model", TINY_ELIP, "--batch-size", "2", "--repetitions", "1", "--threads", "1",
                             "--capacity-bytes", str(BUDGET), "--out", prefix])
    finally:
        torch.set_num_threads(threads)
    return report, prefix


def by_method(rows: pd.DataFrame, mode=bench.TRAIN) -> pd.DataFrame:
    return rows[rows["mode"] == mode].set_index("method")


def test_bench_writes_every_method_and_column(bench_run):
    report, prefix = bench_run
    rows = pd.read_csv(prefix + ".csv")
    assert list(rows.columns) == COLUMNS
    expected = [(m, bench.TRAIN) for m in train_methods()] + [(m, bench.INFER) for m in infer_methods()]
    assert list(zip(rows["method"], rows["mode"])) == expected
    document = json.load(open(prefix + ".json"))
    assert [(r["method"], r["mode"]) for r in document["rows"]] == expected
    assert document["meta"]["model"] == TINY_ELIP and document["meta"]["stock_model"] == TINY_STOCK
    assert document["meta"]["threads"] == 1
    assert [len(t["wall_s"]) for t in document["times"]] == [1] * len(expected)
    assert [r["method"] for r in document["capacity"]] == train_methods()
    assert list(pd.read_csv(prefix + "-capacity.csv")["method"]) == train_methods()
    assert rows["time_ratio"].gt(0).all() and rows["gflops"].gt(0).all()


def test_measured_flops_match_the_token_count_prediction(bench_run):
    rows = bench_run[0]["rows"]
    assert rows["gflops_deviation_pct"].abs().max() <= 2.0
    train = by_method(rows)
    assert train.loc[bench.ELIP, "gflops"] < train.loc[bench.STOCK, "gflops"]
    # one layer per block: the look-ahead's last layer is the first one, so both score alike
    assert train.loc[FIRST_LAYER, "gflops"] == train.loc[bench.ELIP, "gflops"]
    assert train.loc[bench.AUTHORS, "gflops"] > train.loc[bench.ELIP, "gflops"]  # full attention to score


def test_elip_saves_fewer_activation_bytes_than_stock(bench_run):
    train = by_method(bench_run[0]["rows"])
    stock = train.loc[bench.STOCK, "saved_bytes_per_image"]
    for method in (bench.ELIP, FIRST_LAYER, bench.AUTHORS):
        assert train.loc[method, "saved_bytes_per_image"] < stock
    assert train.loc[bench.ELIP, "saved_ratio"] < 1.0


def test_removed_token_shares(bench_run):
    train = by_method(bench_run[0]["rows"])
    # tiny ELIP (65 tokens, layout 1/1/1/1): 65, 1 + 58 + 1, 1 + 42 + 1, 1 + 26 + 1 tokens per layer
    assert train.loc[bench.ELIP, "removed_tokens"] == pytest.approx(1 - (65 + 60 + 44 + 28) / (4 * 65))
    # random drop keeps round(197 / 4) = 49 tokens in every layer: ELIP's budget to within a token
    assert train.loc[bench.RANDOM, "removed_tokens"] == pytest.approx(1 - 49 / 65)
    # EViT: 0.7 of the tokens after the attention of layers 1, 2, 3 (0-based): 65, 65, 47, 35 enter
    assert train.loc[EVIT, "removed_tokens"] == pytest.approx(1 - (65 + 65 + 47 + 35) / (4 * 65))


def test_capacity_mode_fits_a_larger_batch_with_elip(bench_run):
    capacity = bench_run[0]["capacity"].set_index("method")
    assert (capacity["saved_bytes"] <= BUDGET).all()
    assert capacity.loc[bench.ELIP, "batch"] > capacity.loc[bench.STOCK, "batch"] >= 1
    assert capacity.loc[bench.ELIP, "batch_ratio"] > 1.0


def test_stock_flops_match_an_analytic_count(tiny_configs):
    methods, info = bench.build_methods(TINY_ELIP, None, torch.device("cpu"))
    stock_train, stock_infer = methods[0], next(m for m in methods if m.mode == bench.INFER)
    batch = 3
    images, text = bench.make_inputs(stock_train.module, batch, info["embed_dim"], "cpu", torch.float32)
    runner = bench.Runner(torch.device("cpu"), None)
    # tiny ViT: width 64, MLP 256, 65 tokens, 4 layers, 64 patches of 4 x 4 x 3, output 32
    width, mlp, tokens, layers, patches, patch_dim, out = 64, 256, 65, 4, 64, 48, 32
    linear = 2 * tokens * width * (3 * width + width + 2 * mlp)  # qkv, out projection, MLP
    core = 2 * 2 * tokens * tokens * width  # QK^T and AV
    embed, head = 2 * patches * patch_dim * width, 2 * width * out
    forward = embed + layers * (linear + core) + head
    # backward: 2x the matrix products, but the patch embedding only needs its weight gradient,
    # and FlopCounterMode counts SDPA's backward as 5 products (the scores are recomputed)
    train = 2 * embed + layers * (3 * linear + core + 5 * core // 2) + 3 * head
    assert runner.flops(stock_train, images, text) == batch * train
    assert runner.flops(stock_infer, images, text) == batch * forward


def test_authors_code_shape_equals_ours(tiny_configs):
    torch.manual_seed(0)
    visual = open_clip.create_model(TINY_ELIP).visual
    images = torch.randn(3, 3, 32, 32)
    text = F.normalize(torch.randn(3, 32), dim=-1)
    ours = visual(images, text_features=text)
    ours.sum().backward()
    grads = [p.grad.clone() for p in visual.parameters()]
    visual.zero_grad()
    reference = bench.authors_shape_forward(visual, images, text)
    reference.sum().backward()
    torch.testing.assert_close(reference, ours, rtol=1e-4, atol=1e-5)
    for p, grad in zip(visual.parameters(), grads):
        torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-5)


def test_bench_names_what_is_wrong_with_its_model(tiny_configs):
    with pytest.raises(ValueError, match="no OpenCLIP model config 'ViT-Nothing'"):
        bench.run_benchmark(model="ViT-Nothing-elip")
    # a stock name takes each family's defaults: ELIP's paper layout has no 4-layer version, and says so
    with pytest.raises(ValueError, match="no default layout for a 4-layer ViT"):
        bench.run_benchmark(model=TINY_STOCK)


def test_evit_prune_layers_scale_with_depth():
    assert evit_prune_layers(12) == (3, 6, 9)
    assert evit_prune_layers(24) == (6, 12, 18)
    assert evit_prune_layers(4) == (1, 2, 3)
    with pytest.raises(ValueError, match="too shallow"):
        evit_prune_layers(2)


def test_evit_token_counts_per_layer(tiny_configs):
    visual = apply_evit(open_clip.create_model(TINY_STOCK)).visual
    # ceil(0.7 x patches) kept + 1 fused: 64 -> 45 + 1, 46 -> 33 + 1, 34 -> 24 + 1
    expected = ((65, 65), (65, 47), (47, 35), (35, 26))
    assert visual.tokens_per_layer() == expected
    seen = []
    for block in visual.transformer.resblocks:
        block.ln_1.register_forward_pre_hook(lambda m, args: seen.append(("attention", args[0].shape[1])))
        block.mlp.register_forward_pre_hook(lambda m, args: seen.append(("mlp", args[0].shape[1])))
    visual(torch.randn(2, 3, 32, 32))
    assert seen == [(part, n) for counts in expected for part, n in zip(("attention", "mlp"), counts)]


def evit_per_sample(visual, images):
    """EViT as its authors wrote it, one sample at a time: full attention probabilities, top-k in
    score order, the inattentive tokens summed with their (unnormalised) CLS attention."""
    outputs = []
    for image in images:
        x = embed(visual, image.unsqueeze(0))
        for i, block in enumerate(visual.transformer.resblocks):
            if i not in visual.evit_prune_layers:
                x = block(x)
                continue
            h = block.ln_1(x)
            probs = reference_attention_probs(block, h)  # averaged over heads
            x = x + openclip.block_attention(block, h)  # OpenCLIP's own attention
            cls_attn = probs[0, 0, 1:]
            num_keep = -(-7 * (x.shape[1] - 1) // 10)  # ceil(0.7 x (N - 1))
            order = cls_attn.argsort(descending=True)
            keep, rest = order[:num_keep], order[num_keep:]
            tokens = x[0, 1:]
            fused = (tokens[rest] * cls_attn[rest, None]).sum(0, keepdim=True)
            x = torch.cat([x[0, :1], tokens[keep], fused]).unsqueeze(0)
            x = x + block.mlp(block.ln_2(x))
        pooled, _ = openclip.pool(visual, x)
        outputs.append(pooled[0] @ visual.proj)
    return torch.stack(outputs)


def test_evit_equals_a_per_sample_recomputation(tiny_configs):
    torch.manual_seed(0)
    visual = apply_evit(open_clip.create_model(TINY_STOCK)).visual
    images = torch.randn(3, 3, 32, 32)
    ours = visual(images)
    ours.pow(2).sum().backward()
    grads = [p.grad.clone() for p in visual.parameters()]
    visual.zero_grad()
    reference = evit_per_sample(visual, images)
    reference.pow(2).sum().backward()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    for p, grad in zip(visual.parameters(), grads):  # gradient flows through the fusing weights too
        torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-5)
