"""python -m open_clip_elip.gpu_check (``make gpu-check``): without CUDA it says so and exits 0; its measuring
code and its trainer runs, on the CPU with the tiny models (numbers that mean nothing)."""
import json
import re

import pytest
import torch
from conftest import TINY_ELIP, TINY_STOCK
from torch._dynamo import register_backend

from open_clip_elip import gpu_check

TINY = ["--stock", TINY_STOCK, "--elip", TINY_ELIP, "--batch-size", "2"]


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread, here and in the trainer: a tiny model's steps are many times faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)
ROW = re.compile(  # label, mode, images/s, x stock
    r"^\| (stock|elip \(look-ahead\)|elip \(first_layer\)) \| (eager|compiled) \| ([\d.]+) \| ([\d.]*) \| "
    r"n/a \(no CUDA\) \|", re.MULTILINE)


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "measure", lambda *args: (_ for _ in ()).throw(AssertionError("measured")))
    assert gpu_check.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No CUDA device is available") and "nothing was measured" in out
    assert "stock = ViT-B-16, elip (look-ahead) = ViT-B-16-elip, elip (first_layer) = ViT-B-16-elip with " \
           "elip_cfg={'scoring': 'first_layer'}: batch 128, bf16 autocast" in out
    assert "median of 3 interleaved repetitions of 10 steps after 3 warm-up steps" in out  # --quick
    assert "eager and torch.compile" in out and "4096 synthetic webdataset samples" in out


def test_measuring_code_on_cpu(tiny_configs, one_thread, tmp_path, capsys):
    """Eager and compiled steps of the three models. The compiler here is dynamo with a backend that fails for
    the first graph (the stock model's) and runs the others as traced: the failure is reported, the rest is
    measured, and the exit status is 1."""
    compiled = []

    def first_fails(graph, example_inputs):
        compiled.append(graph)
        if len(compiled) == 1:
            raise RuntimeError("no code for this graph")
        return graph.forward

    register_backend(first_fails, name="gpu_check_test_backend")
    report = tmp_path / "report.json"
    code = gpu_check.main(["--device", "cpu", *TINY, "--repeats", "2", "--steps", "1", "--warmup", "1",
                           "--compile-backend", "gpu_check_test_backend", "--no-trainer", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 1 and len(compiled) >= 3
    assert re.search(r"^\| stock \| compiled \| failed: BackendCompilerFailed: ", out, re.M)
    rows = ROW.findall(out)
    assert [(label, mode) for label, mode, _, _ in rows] == [
        ("stock", "eager"), ("elip (look-ahead)", "eager"), ("elip (look-ahead)", "compiled"),
        ("elip (first_layer)", "eager"), ("elip (first_layer)", "compiled")]
    assert rows[0][3] == "1.00" and all(float(rate) > 0 for _, _, rate, _ in rows)
    assert [ratio for _, mode, _, ratio in rows if mode == "compiled"] == ["", ""]  # no stock to compare with
    saved = json.loads(report.read_text())
    assert [row["elip_cfg"] for row in saved["steps"]] == [None, None, {"scoring": "first_layer"}]
    assert "no code for this graph" in saved["steps"][0]["compiled"]["error"]
    for row in saved["steps"]:
        assert len(row["eager"]["rates"]) == 2 and row["eager"]["peak_bytes"] is None
    assert len(saved["steps"][1]["compiled"]["rates"]) == 2


def test_first_layer_variant_through_the_trainer(tiny_configs, one_thread, tmp_path, monkeypatch):
    """Part 2 for the variant that needs a config of its own (the others differ only by name): shards written,
    the config registered for the trainer's process, one epoch of 4 steps, its samples/s read from the log."""
    args = gpu_check.parse_args(["--device", "cpu", *TINY, "--workers", "1", "--trainer-samples", "8"])
    first_layer = gpu_check.variants(args)[2]
    monkeypatch.setattr(gpu_check, "variants", lambda args: [first_layer])
    rows = gpu_check.run_trainer(args, tmp_path)
    assert len(rows) == 1 and rows[0]["exit"] == 0, rows[0].get("error")
    assert rows[0]["model"] == f"{TINY_ELIP}-first-layer" and rows[0]["steps"] == 4 and rows[0]["samples_per_s"] > 0
    config = json.loads((tmp_path / "configs" / f"{TINY_ELIP}-first-layer.json").read_text())
    assert config["elip_cfg"]["scoring"] == "first_layer" and config["elip_cfg"]["layout"] == [1, 1, 1, 1]
    log = (tmp_path / "logs" / f"{TINY_ELIP}-first-layer" / "out.log").read_text()
    assert f"Loaded built-in {TINY_ELIP}-first-layer model config." in log
    assert (tmp_path / "shards" / "shard-000000.tar").stat().st_size > 0


def test_trainer_rate_reads_the_trainer_log():
    line = ("2026-12-01,21:39:47 | INFO | Train Epoch: 0 [{n:>4}/4096 (3%)] Data (t): 0.708 Batch (t): 1.990, "
            "{rate}/s, {rate}/s/gpu LR: 0.001000 Logit Scale: 14.286 Contrastive_loss: 2.0 (2.0) Loss: 2.0 (2.0)")
    log = "\n".join(line.format(n=128 * (i + 1), rate=rate) for i, rate in enumerate([5.0, 900.0, 1000.0, 1100.0]))
    assert gpu_check.trainer_rate(log) == 1000.0  # the first (warm-up) step left out
    assert gpu_check.trainer_rate("no step lines") is None
