"""Efficiency benchmark of the image tower: ``python -m open_clip_elip.bench``.

One row per method: stock; every registered family (``core.registry``: ELIP with look-ahead scoring, the
``-elip`` default, EViT, ToMe, a user's) with its defaults and the variants it declares (ELIP with first-layer
scoring); random token drop at ELIP's token budget (OpenCLIP's patch dropout); and the authors' code shape of
ELIP (a reference kept here, not in the model code); a training step (forward and backward of the image
tower) for each; and forward-only inference rows: stock vs the families' inference variants (ELIP's
vision-only ``prune_without_text``, look-ahead and first-layer scoring). Columns: share of token-layers
removed, GFLOPs per image measured (``FlopCounterMode``) and predicted from token counts, activation bytes
saved for backward per image (``saved_tensors_hooks``), peak memory (CUDA only), and time per step as a ratio
to stock (median over interleaved repetitions, wall and process CPU time).
``--capacity-bytes`` finds the largest batch each method fits in a budget.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .core import openclip, registry
from .core.attention import attention_with_probs
from .core.costs import TowerCost, predict_plain
from .core.registry import TRAIN, Family
from .core.towers import embed
from .families.elip import ElipVisionTransformer, predict_elip
from .families.elip.tokens import MERGE_EPS

INFER = registry.INFERENCE
STOCK, ELIP, RANDOM, AUTHORS = "stock", "elip", "random drop", "authors' code shape"
PRECISIONS = {  # name -> (parameter and input dtype, autocast dtype or None)
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "amp_bf16": (torch.float32, torch.bfloat16),
    "amp": (torch.float32, torch.float16),
    "amp_fp16": (torch.float32, torch.float16),
}
MIB = 2 ** 20


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    batch, tokens, width = query
    return 2 * batch * tokens * width * 4 * width + 4 * batch * tokens * tokens * width


# Attention kernels FlopCounterMode does not know: the CPU SDPA kernels and the
# nn.MultiheadAttention inference fast path (projections included).
EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


@dataclass
class Method:
    """One benchmark row: how to run it and what its token counts predict."""

    name: str
    mode: str
    module: torch.nn.Module
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, text features) -> features
    layer_tokens: Tuple[int, ...]  # tokens entering each layer on the gradient (or inference) path
    predicted_flops: int  # per image, for its mode
    compilable: bool = True


def authors_shape_forward(visual: ElipVisionTransformer, images: torch.Tensor,
                          text_features: torch.Tensor) -> torch.Tensor:
    """REFERENCE ONLY, the shape of the authors' code (issue 2): the same maths as
    ``ElipVisionTransformer`` (look-ahead scoring), but every block it looks ahead through is
    deep-copied, the full attention probabilities of its last layer are computed (as ``nn.MultiheadAttention``'s
    ``need_weights=True`` gave them), and tokens are selected and merged per sample in a Python loop. Kept for the
    benchmark."""
    cfg = visual.elip_cfg
    if cfg.scoring != "lookahead":
        raise ValueError("the authors' code shape only scores by look-ahead")
    with torch.no_grad():
        text_embed = text_features.to(visual.proj.dtype) @ visual.proj.T
    x = embed(visual, images)
    num_tokens = x.shape[1]
    start = 0
    for b, n_layers in enumerate(cfg.layout):
        layers = openclip.blocks(visual)[start:start + n_layers]
        start += n_layers
        if b > 0:
            with torch.no_grad():
                lookahead = copy.deepcopy(layers)
                z = x.detach().clone()
                z[:, 0] = (1 - cfg.lam) * text_embed.to(z.dtype) + cfg.lam * z[:, 0]
                for layer in lookahead[:-1]:
                    z = layer(z)
                _, attn = attention_with_probs(lookahead[-1], lookahead[-1].ln_1(z))  # averaged over heads
                scores = attn[:, 0, 1:]
            num_keep = min(int(num_tokens * cfg.keep_ratios[b - 1]), x.shape[1] - 1)
            rows = []
            for i in range(x.shape[0]):
                order = scores[i].argsort(descending=True)
                keep, pruned = order[:num_keep].sort().values, order[num_keep:]
                patches = x[i, 1:]
                row = [x[i, :1], patches[keep]]
                if cfg.merge and len(pruned):
                    weights = scores[i, pruned] / (scores[i, pruned].sum() + MERGE_EPS)
                    row.append(weights.to(x.dtype).unsqueeze(0) @ patches[pruned])
                rows.append(torch.cat(row))
            x = torch.stack(rows)
        for layer in layers:
            x = layer(x)
    pooled, _ = openclip.pool(visual, x)
    return pooled @ visual.proj


def random_drop_prob(num_patches: int, tokens_per_layer: float) -> Tuple[float, int]:
    """Patch-dropout probability that keeps ``round(tokens_per_layer) - 1`` patches in every layer."""
    patches = max(1, round(tokens_per_layer) - 1)
    prob = 1.0 - (patches + 0.5) / num_patches
    if int(num_patches * (1 - prob)) != patches:
        raise AssertionError(f"patch dropout {prob} does not keep {patches} patches")
    return prob, patches


def build_methods(model_name: str, image_size: Optional[int], device: torch.device) -> Tuple[List[Method], dict]:
    """The benchmark's rows, all with the same weights, in fp32 on ``device``: stock; every registered family
    with its defaults and its variants (``core.registry``); random drop at ELIP's token budget; the authors'
    code shape of ELIP. ``model_name`` is a stock ViT or any family's twin of it (the family part is dropped)."""
    stock_name = registry.family_part().sub("", model_name)
    stock_config = open_clip.get_model_config(stock_name)
    if stock_config is None:
        raise ValueError(f"--model {model_name!r}: no OpenCLIP model config {stock_name!r}; give a stock ViT "
                         "(e.g. ViT-S-16) or a family twin of one (e.g. ViT-S-16-elip)")
    sizes = {} if image_size is None else {"force_image_size": image_size}
    stock_model = open_clip.create_model(stock_name, **sizes)
    stock = stock_model.visual
    cost = TowerCost.of(stock)
    depth = len(openclip.blocks(stock))
    n0 = cost.num_patches + 1

    named = open_clip.get_model_config(model_name) or {}

    def guided(visual):
        return lambda images, text: visual(images, text_features=text)

    def unguided(visual):
        return lambda images, text: visual(images)

    def row(family: Family, name: str, options: dict, mode: str) -> Method:
        """The family's block in the named config if it has one, else the family's defaults; then ``options``."""
        base = named.get(family.config_block) or family.default_options(stock_config)
        model = family.apply(copy.deepcopy(stock_model), **{**base, **options})
        visual = model.visual
        forward = guided(visual) if family.takes_caption and mode == TRAIN else unguided(visual)
        return Method(name, mode, visual, forward, family.layer_tokens(visual),
                      family.flops(visual, cost, mode == TRAIN))

    train_rows, inference_rows = [], []
    for family in registry.FAMILIES.values():
        train_rows.append(row(family, family.name, {}, TRAIN))
        for variant in family.variants:
            (train_rows if variant.mode == TRAIN else inference_rows).append(
                row(family, variant.name, variant.options, variant.mode))
    elip = next(m for m in train_rows if m.name == ELIP)
    prob, patches = random_drop_prob(cost.num_patches, sum(elip.layer_tokens) / depth)
    dropped = open_clip.create_model(stock_name, force_patch_dropout=prob, **sizes).visual
    dropped.load_state_dict(stock.state_dict())
    methods = [
        Method(STOCK, TRAIN, stock, unguided(stock), (n0,) * depth, predict_plain(cost, (n0,) * depth, True)),
        *train_rows,
        Method(RANDOM, TRAIN, dropped, unguided(dropped), (patches + 1,) * depth,
               predict_plain(cost, (patches + 1,) * depth, True)),
        Method(AUTHORS, TRAIN, elip.module, lambda images, text: authors_shape_forward(elip.module, images, text),
               elip.layer_tokens, predict_elip(elip.module, cost, True, authors_shape=True), compilable=False),
        Method(STOCK, INFER, stock, unguided(stock), (n0,) * depth, predict_plain(cost, (n0,) * depth, False)),
        *inference_rows,
    ]
    for method in methods:
        method.module.to(device)
    info = {"stock_model": stock_name, "tokens": n0, "depth": depth, "embed_dim": cost.embed_dim,
            "random_drop_prob": prob, "random_drop_patches": patches,
            "image_size": list(stock.image_size)}
    return methods, info


def check_authors_shape(methods: Sequence[Method], batch_size: int, embed_dim: int, device) -> float:
    """Assert that the authors'-shape reference equals ours (fp32); return the max abs difference."""
    by_name = {(m.name, m.mode): m for m in methods}
    ours, reference = by_name[ELIP, TRAIN], by_name[AUTHORS, TRAIN]
    images, text = make_inputs(ours.module, batch_size, embed_dim, device, torch.float32, seed=1)
    with torch.no_grad():
        expected, actual = ours.forward(images, text), reference.forward(images, text)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"authors' code shape differs from ours: {m}")
    return (actual - expected).abs().max().item()


def make_inputs(visual, batch_size: int, embed_dim: int, device, dtype, seed: int = 0):
    """Random images and random L2-normalised text features."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, *visual.image_size, generator=generator)
    text = F.normalize(torch.randn(batch_size, embed_dim, generator=generator), dim=-1)
    return images.to(device, dtype), text.to(device, dtype)


class Runner:
    """Runs one method's step (training: forward and backward; inference: forward, no grad)."""

    def __init__(self, device: torch.device, autocast_dtype: Optional[torch.dtype]):
        self.device, self.autocast_dtype = device, autocast_dtype

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, method: Method, images, text, forward=None, backward: bool = True):
        forward = forward or method.forward
        method.module.train(method.mode == TRAIN)
        if method.mode == INFER:
            with torch.no_grad(), self.autocast():
                return forward(images, text)
        with self.autocast():
            features = forward(images, text)
        if backward:
            features.float().pow(2).mean().backward()
            for p in method.module.parameters():
                p.grad = None
        return features

    def flops(self, method: Method, images, text) -> int:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            self.step(method, images, text)
        return counter.get_total_flops()

    def saved_bytes(self, method: Method, images, text) -> int:
        """Bytes of the tensors autograd saves for backward (storages counted once, parameters excluded)."""
        parameters = {p.untyped_storage().data_ptr() for p in method.module.parameters()}
        storages: Dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            self.step(method, images, text, backward=False)
        return sum(storages.values())

    def timed_step(self, method: Method, images, text, forward) -> Tuple[float, float, Optional[float]]:
        """Wall and process-CPU seconds of one step, and the peak memory above the start (MiB)
        where the device reports it."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start_bytes = torch.cuda.memory_allocated(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        self.step(method, images, text, forward)
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        peak = (torch.cuda.max_memory_allocated(self.device) - start_bytes) / MIB if cuda else None
        return seconds, cpu_seconds, peak


def interleaved_times(runner: Runner, methods: Sequence[Method], forwards, images, text, repetitions: int,
                      warmup: bool = True):
    """Per method, wall and CPU seconds of each repetition (round-robin, starting one method later
    each time), and the peak memory (None where the device does not report it)."""
    peaks: Dict[int, Optional[float]] = {i: None for i in range(len(methods))}
    for i, method in enumerate(methods if warmup else ()):  # warm-up (and compilation)
        runner.step(method, images, text, forwards[i])
    wall: Dict[int, List[float]] = {i: [] for i in range(len(methods))}
    cpu: Dict[int, List[float]] = {i: [] for i in range(len(methods))}
    for r in range(repetitions):
        for k in range(len(methods)):
            i = (r + k) % len(methods)
            seconds, cpu_seconds, peak = runner.timed_step(methods[i], images, text, forwards[i])
            wall[i].append(seconds)
            cpu[i].append(cpu_seconds)
            if peak is not None:
                peaks[i] = max(peaks[i] or 0.0, peak)
    return wall, cpu, peaks


def largest_batch(runner: Runner, method: Method, budget: int, embed_dim: int, device, dtype) -> Tuple[int, int]:
    """Largest batch whose saved activation bytes fit ``budget``: extrapolated from batches 1
    and 2 (bytes are linear in the batch), then verified once (and stepped down if over)."""
    def measure(batch):
        images, text = make_inputs(method.module, batch, embed_dim, device, dtype)
        return runner.saved_bytes(method, images, text)

    one, two = measure(1), measure(2)
    per_image, fixed = two - one, 2 * one - two
    if per_image <= 0:
        raise RuntimeError(f"{method.name}: saved bytes do not grow with the batch ({one} at 1, {two} at 2)")
    batch = max(0, (budget - fixed) // per_image)
    used = measure(batch) if batch else 0
    while batch and used > budget:
        batch -= 1
        used = measure(batch) if batch else 0
    return int(batch), int(used)


def median_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    return statistics.median(t / r for t, r in zip(times, reference))


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model}"


def run_benchmark(model: str = "ViT-S-16", batch_size: int = 8, image_size: Optional[int] = None,
                  repetitions: int = 5, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                  capacity_bytes: Optional[int] = None, argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; return ``{"meta", "rows", "capacity", "times"}`` (rows and capacity as pandas
    DataFrames; times: each method's seconds per repetition, wall and process CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if batch_size < 1 or repetitions < 1:
        raise ValueError("--batch-size and --repetitions must be at least 1")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    dtype, autocast_dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    methods, info = build_methods(model, image_size, device)
    max_diff = check_authors_shape(methods, min(batch_size, 4), info["embed_dim"], device)
    for method in methods:
        method.module.to(dtype)
    runner = Runner(device, autocast_dtype)
    images, text = make_inputs(methods[0].module, batch_size, info["embed_dim"], device, dtype)

    reference = {mode: next(i for i, m in enumerate(methods) if m.name == STOCK and m.mode == mode)
                 for mode in (TRAIN, INFER)}
    flops = [runner.flops(m, images, text) / batch_size for m in methods]  # eager; also the warm-up
    saved = [runner.saved_bytes(m, images, text) / batch_size if m.mode == TRAIN else None for m in methods]
    forwards = [torch.compile(m.forward) if compile and m.compilable else m.forward for m in methods]
    wall, cpu, peaks = interleaved_times(runner, methods, forwards, images, text, repetitions, warmup=compile)
    rows = []
    for i, method in enumerate(methods):
        stock = reference[method.mode]
        rows.append({
            "method": method.name,
            "mode": method.mode,
            "removed_tokens": 1 - sum(method.layer_tokens) / sum(methods[stock].layer_tokens),
            "gflops": flops[i] / 1e9,
            "gflops_predicted": method.predicted_flops / 1e9,
            "gflops_deviation_pct": 100 * (flops[i] - method.predicted_flops) / method.predicted_flops,
            "saved_bytes_per_image": saved[i],
            "saved_ratio": None if saved[i] is None else saved[i] / saved[stock],
            "peak_mib": peaks[i],
            "time_ratio": median_ratio(wall[i], wall[stock]),
            "cpu_time_ratio": median_ratio(cpu[i], cpu[stock]),
            "time_ms": statistics.median(wall[i]) * 1e3 if device.type == "cuda" else None,
        })
    capacity = []
    if capacity_bytes is not None:
        for method in (m for m in methods if m.mode == TRAIN):
            batch, used = largest_batch(runner, method, capacity_bytes, info["embed_dim"], device, dtype)
            capacity.append({"method": method.name, "batch": batch, "saved_bytes": used})
        stock_batch = capacity[0]["batch"]
        for row in capacity:
            row["batch_ratio"] = row["batch"] / stock_batch if stock_batch else math.inf
    times = [{"method": m.name, "mode": m.mode, "wall_s": wall[i], "cpu_s": cpu[i]} for i, m in enumerate(methods)]
    meta = {
        "command": shlex.join(["python", "-m", "open_clip_elip.bench", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__, "open_clip": open_clip.__version__,
        "device": device_description(device), "threads": torch.get_num_threads(),
        "model": model, "batch_size": batch_size, "repetitions": repetitions, "precision": precision,
        "compile": compile, "capacity_bytes": capacity_bytes, "authors_shape_max_abs_diff": max_diff, **info,
    }
    return {"meta": meta, "rows": pd.DataFrame(rows), "capacity": pd.DataFrame(capacity), "times": times}


def format_report(report: dict) -> str:
    """The report as text: a header, the table, and the checks."""
    meta, rows, capacity = report["meta"], report["rows"], report["capacity"]
    lines = [
        f"# {meta['command']}",
        f"# torch {meta['torch']}, open_clip {meta['open_clip']}, {meta['device']}, {meta['threads']} threads",
        f"# {meta['stock_model']} and its family twins: {meta['image_size'][0]} px, {meta['tokens']} tokens, "
        f"batch {meta['batch_size']}, {meta['precision']}, {meta['repetitions']} repetitions, "
        f"compile {'on' if meta['compile'] else 'off'}",
        f"# random drop: patch dropout prob {meta['random_drop_prob']:.4f} keeps {meta['random_drop_patches']} "
        f"patches in every layer (ELIP's token-layer budget)",
        f"# authors' code shape equals ours (max abs diff {meta['authors_shape_max_abs_diff']:.2e})",
        "# time x (wall) and cpu time x (process CPU time): median over repetitions of the ratio to stock "
        "within each round-robin repetition"
        + ("" if meta["device"].startswith("cuda") else "; absolute times only on a GPU"),
        "",
    ]
    table = pd.DataFrame({
        "method": rows["method"], "mode": rows["mode"],
        "removed": rows["removed_tokens"].map("{:.1%}".format),
        "GFLOPs/img": rows["gflops"].map("{:.2f}".format),
        "predicted": rows["gflops_predicted"].map("{:.2f}".format),
        "dev %": rows["gflops_deviation_pct"].map("{:+.2f}".format),
        "saved MiB/img": rows["saved_bytes_per_image"].map(lambda b: "-" if pd.isna(b) else f"{b / MIB:.2f}"),
        "saved x": rows["saved_ratio"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}"),
        "peak MiB": rows["peak_mib"].map(lambda p: "n/a" if pd.isna(p) else f"{p:.0f}"),
        "time x": rows["time_ratio"].map("{:.3f}".format),
        "cpu time x": rows["cpu_time_ratio"].map("{:.3f}".format),
    })
    if rows["time_ms"].notna().any():
        table["ms"] = rows["time_ms"].map("{:.1f}".format)
    lines.append(table.to_string(index=False))
    worst = rows["gflops_deviation_pct"].abs().max()
    lines.append(f"\nGFLOPs vs token-count prediction: max deviation {worst:.2f}% "
                 f"({'within' if worst <= 2 else 'OUTSIDE'} 2%)")
    train = rows[rows["mode"] == TRAIN].set_index("method")
    lines.append(f"authors' code shape takes {train.loc[AUTHORS, 'time_ratio'] / train.loc[ELIP, 'time_ratio']:.2f}x "
                 f"the time of ours (elip)")
    if len(capacity):
        lines.append(f"\ncapacity: largest batch within {meta['capacity_bytes'] / MIB:.1f} MiB of saved activations")
        lines.append(pd.DataFrame({
            "method": capacity["method"], "batch": capacity["batch"],
            "saved MiB": (capacity["saved_bytes"] / MIB).map("{:.1f}".format),
            "batch x": capacity["batch_ratio"].map("{:.2f}".format),
        }).to_string(index=False))
    return "\n".join(lines)


def write_report(report: dict, prefix: str) -> List[str]:
    """``PREFIX.csv`` (rows), ``PREFIX.json`` (meta, rows, capacity, times), ``PREFIX-capacity.csv`` if any."""
    paths = [f"{prefix}.csv", f"{prefix}.json"]
    report["rows"].to_csv(paths[0], index=False)
    document = {"meta": report["meta"], "rows": json.loads(report["rows"].to_json(orient="records")),
                "capacity": json.loads(report["capacity"].to_json(orient="records")), "times": report["times"]}
    with open(paths[1], "w") as f:
        json.dump(document, f, indent=2)
    if len(report["capacity"]):
        paths.append(f"{prefix}-capacity.csv")
        report["capacity"].to_csv(paths[2], index=False)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-S-16", help="a stock ViT, or a family twin of one (ViT-S-16-elip): "
                        "every family is benchmarked on its architecture")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--repetitions", type=int, default=5, help="timed steps per method (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each method (not the reference)")
    parser.add_argument("--capacity-bytes", type=int, default=None,
                        help="budget of saved activation bytes: find the largest batch of each method")
    parser.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.csv and PREFIX.json")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_benchmark(args.model, args.batch_size, args.image_size, args.repetitions, args.device,
                           args.precision, args.compile, args.capacity_bytes,
                           argv=argv if argv is not None else sys.argv[1:])
    print(format_report(report))
    if args.out:
        print("wrote " + ", ".join(write_report(report, args.out)))
    return report


if __name__ == "__main__":
    main()
