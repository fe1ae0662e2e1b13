"""Runs the plan: each run trains with OpenCLIP's own trainer, is scored by clip_benchmark and, for
ELIP-family checkpoints, by the leak diagnostic (and on scenes canvases the steering diagnostic), each in its
own process with its own log under ``OUT/runs/<method>/seed<k>/``. A run with a ``result.json`` of status ``ok``
is never repeated; an unfinished or failed one is moved aside (``*.attempt-N``) and started again. Runs live in
``OUT/runs/<cell>/<method>/seed<k>/`` (``<cell>``: regime and schedule, e.g. ``fashion-x1``)."""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from ..demo import step_seconds
from ..evaluate import clip_benchmark_eval
from ..resize import resize_file
from .data import StudyData, training_settings
from .plan import Preset, Run

LOSS_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?Contrastive_loss: ([0-9.]+)")


class Runner:
    """Executes runs of one study: its folder, settings, preset (at schedule 1) and data by regime."""

    def __init__(self, out: Path, args: argparse.Namespace, preset: Preset, data: Dict[str, StudyData]):
        self.out, self.args, self.preset, self.data = out, args, preset, data
        self.lock = threading.Lock()

    def folder(self, run: Run) -> Path:
        return self.out / "runs" / run.key

    def finished(self, run: Run) -> Optional[dict]:
        path = self.folder(run) / "result.json"
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("status") == "ok":
                return record
        return None

    def execute(self, run: Run, before: Optional[dict]) -> dict:
        """Train, evaluate and diagnose one run; its ``result.json`` record (status ok or failed)."""
        folder = self.folder(run)
        if folder.exists():  # an interrupted or failed attempt: kept aside, never deleted
            attempt = 1
            while folder.with_name(f"{folder.name}.attempt-{attempt}").exists():
                attempt += 1
            folder.rename(folder.with_name(f"{folder.name}.attempt-{attempt}"))
        folder.mkdir(parents=True)
        record = {"method": run.method, "seed": run.seed, "regime": run.regime, "schedule": run.schedule,
                  "model": run.model, "eval_model": run.eval_model,
                  "trainer_flags": " ".join(run.flags), "train_gflops_per_image": run.train_flops / 1e9}
        started = time.time()
        try:
            if run.after and (before is None or before.get("status") != "ok"):
                raise RuntimeError(f"{run.method} continues the {run.after} run of seed {run.seed}, which failed")
            record.update(self.train(run, folder, before))
            checkpoint = record.pop("checkpoint")
            record.update(self.evaluate(run, folder, checkpoint))
            if run.leak_model and self.data[run.regime].heldout:
                record.update(self.leak(run, folder, checkpoint))
            if run.steer_model and self.data[run.regime].heldout and self.data[run.regime].boxes:
                record.update(self.steering(run, folder, checkpoint))
            record["status"] = "ok"
        except Exception as exc:  # reported as failed in the table; the other runs go on
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        record["wall_seconds"] = round(time.time() - started, 1)
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.rename(folder / "result.json")
        return record

    def env(self) -> dict:
        threads = str(self.args.threads)
        return dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OMP_WAIT_POLICY="PASSIVE",
                    CUDA_VISIBLE_DEVICES="")

    def trainer_command(self, run: Run, folder: Path, before: Optional[dict]) -> List[str]:
        preset, epochs = self.preset, self.preset.epochs
        steps = math.ceil(run.samples_per_epoch / preset.batch_size) * epochs
        training = training_settings(self.args, run.regime)
        command = [
            sys.executable, "-m", "open_clip_train.main", "--model", run.model,
            "--train-data", self.data[run.regime].train_data, "--train-num-samples", str(run.samples_per_epoch),
            "--dataset-type", "webdataset", "--batch-size", str(preset.batch_size), "--epochs", str(epochs),
            "--lr", str(training["lr"]), "--wd", "0.1", "--warmup", str(warmup_steps(steps, training["warmup"])),
            "--precision", "fp32", "--workers", "0", "--device", "cpu", "--seed", str(run.seed),
            "--logs", str(folder / "train"), "--name", run.method, "--log-every-n-steps", str(preset.log_every),
            "--save-frequency", str(max(1, epochs - 1)), *run.flags]
        if training["grad_clip_norm"]:
            command += ["--grad-clip-norm", str(training["grad_clip_norm"])]
        if run.after:  # continue the earlier run's second-to-last checkpoint: same schedule, last epoch
            command += ["--resume", self.resume_from(run, folder, before)]
        return command

    @staticmethod
    def resume_from(run: Run, folder: Path, before: dict) -> str:
        """The earlier run's checkpoint, or a copy resized to this run's image size if it was trained at another
        (its positional embedding resized as OpenCLIP does: ``open_clip_elip.resize``)."""
        if not Path(before["resume_from"]).is_file():
            raise RuntimeError(f"{run.method} continues {run.after}'s checkpoint {before['resume_from']}, which is "
                               f"gone (a finished run's record without its checkpoint): move "
                               f"{Path(before['resume_from']).parents[3]} aside to run {run.after} again")
        if before["image_size"] == run.image_size:
            return before["resume_from"]
        return str(resize_file(run.model, Path(before["resume_from"]), folder / "resumed_at_full_size.pt"))

    def train(self, run: Run, folder: Path, before: Optional[dict]) -> dict:
        command = self.trainer_command(run, folder, before)
        (folder / "command.txt").write_text(" ".join(command) + "\n")
        started = time.time()
        with open(folder / "trainer.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()).returncode
        seconds = time.time() - started
        checkpoints = folder / "train" / run.method / "checkpoints"
        final = checkpoints / f"epoch_{self.preset.epochs}.pt"
        if code or not final.exists():
            tail = (folder / "trainer.log").read_text()[-1500:]
            raise RuntimeError(f"the trainer failed (exit status {code}); see {folder / 'trainer.log'}:\n{tail}")
        out_log = folder / "train" / run.method / "out.log"
        curve = loss_curve(out_log.read_text(), run.samples_per_epoch)
        curve.to_csv(folder / "curve.csv", index=False)
        record = {"checkpoint": str(final), "samples_seen": run.samples_per_epoch * self.preset.epochs,
                  "image_size": run.image_size,
                  "seconds_per_step": step_seconds(out_log), "train_seconds": round(seconds, 1),
                  "resume_from": str(checkpoints / f"epoch_{self.preset.epochs - 1}.pt")}
        if run.after:  # the earlier run's epochs count too
            tune = 1 / self.preset.epochs
            record["train_seconds"] = round(before["train_seconds"] * (1 - tune) + seconds, 1)
            record["seconds_per_step"] = before["seconds_per_step"] * (1 - tune) + record["seconds_per_step"] * tune
            earlier = pd.read_csv(self.out / "runs" / run.key_of(run.after) / "curve.csv")
            curve = pd.concat([earlier[earlier.epoch < self.preset.epochs - 1], curve])
            curve.to_csv(folder / "curve.csv", index=False)
        return record

    def evaluate(self, run: Run, folder: Path, checkpoint: str) -> dict:
        """clip_benchmark's zero-shot (and linear probe) of the checkpoint as ``eval_model``; zero-shot again as
        ``pruned_model`` (``zeroshot_top1_pruned``), unless that is the same model."""
        evaluations = [(run.eval_model, "zeroshot_classification", {"acc1": "zeroshot_top1", "acc5": "zeroshot_top5"})]
        if self.args.probe:
            evaluations.append((run.eval_model, "linear_probe", {"lp_acc1": "linear_probe_top1"}))
        if run.pruned_model and run.pruned_model != run.eval_model:
            evaluations.append((run.pruned_model, "zeroshot_classification", {"acc1": "zeroshot_top1_pruned"}))
        data, record = self.data[run.regime], {}
        for model, task, metrics in evaluations:
            name = task if model == run.eval_model else f"{task}_pruned"
            path = clip_benchmark_eval(model, checkpoint, data.eval_dataset, task, data.eval_root,
                                       folder / "eval" / f"{name}.json", batch_size=256)
            found = json.loads(path.read_text())["metrics"]
            for metric, column in metrics.items():
                key = metric if metric in found else metric.removeprefix("lp_")
                record[column] = round(100 * found[key], 4)
        if run.pruned_model == run.eval_model:  # it reduces tokens at inference anyway
            record["zeroshot_top1_pruned"] = record["zeroshot_top1"]
        return record

    def leak(self, run: Run, folder: Path, checkpoint: str) -> dict:
        command = [sys.executable, "-m", "open_clip_elip.leak", "--model", run.leak_model, "--pretrained", checkpoint,
                   "--data", self.data[run.regime].heldout, "--samples", str(self.preset.leak_samples),
                   "--batch-size", str(self.preset.batch_size), "--seed", str(run.seed), "--out",
                   str(folder / "leak.json")]
        with open(folder / "leak.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()).returncode
        if code:
            raise RuntimeError(f"the leak diagnostic failed (exit status {code}); see {folder / 'leak.log'}")
        return {f"leak_{key}" if not key.startswith("leak_") else key: value
                for key, value in json.loads((folder / "leak.json").read_text()).items()}

    def steering(self, run: Run, folder: Path, checkpoint: str) -> dict:
        """The steering diagnostic (``open_clip_elip.steering``) on the held-out scenes canvases: ``steer_*``."""
        command = [sys.executable, "-m", "open_clip_elip.steering", "--model", run.steer_model, "--pretrained",
                   checkpoint, "--data", self.data[run.regime].heldout, "--samples", str(self.preset.leak_samples),
                   "--batch-size", str(self.preset.batch_size), "--out", str(folder / "steering.json")]
        with open(folder / "steering.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()).returncode
        if code:
            raise RuntimeError(f"the steering diagnostic failed (exit status {code}); see {folder / 'steering.log'}")
        return {f"steer_{key}": value for key, value in json.loads((folder / "steering.json").read_text()).items()}

    def run_all(self, runs: List[Run]) -> List[dict]:
        """Every run, ``--jobs`` at a time; finished ones are found and not repeated."""
        total, done, durations = len(runs), [0], []
        started = time.time()
        records: Dict[str, concurrent.futures.Future] = {}

        position = {run.key: i + 1 for i, run in enumerate(runs)}

        def report(run: Run, record: dict, found: bool) -> None:
            with self.lock:
                done[0] += 1
                if not found:
                    durations.append(record["wall_seconds"])
                left = total - done[0]
                estimate = statistics.mean(durations) * left / self.args.jobs if durations and left else 0
                if found:
                    what = "found (not repeated)"
                elif record["status"] == "ok":
                    what = (f"finished in {record['wall_seconds']:.0f} s: zero-shot top-1 "
                            f"{record.get('zeroshot_top1', float('nan')):.2f}")
                else:
                    what = f"FAILED after {record['wall_seconds']:.0f} s: {record['error'].splitlines()[0][:200]}"
                print(f"[run {position[run.key]} of {total}] {run.key} {what}; {done[0]} of {total} done, "
                      f"about {estimate / 60:.0f} min left ({time.time() - started:.0f} s so far)", flush=True)

        def task(run: Run) -> dict:
            before = records[run.key_of(run.after)].result() if run.after else None
            record = self.finished(run)
            if record is not None:
                report(run, record, found=True)
                return record
            with self.lock:
                print(f"[run {position[run.key]} of {total}] {run.key} started: {run.model} "
                      f"{' '.join(run.flags)}".rstrip(), flush=True)
            record = self.execute(run, before)
            report(run, record, found=False)
            return record

        with concurrent.futures.ThreadPoolExecutor(self.args.jobs) as pool:
            for run in runs:  # a run that continues another is queued after it
                records[run.key] = pool.submit(task, run)
            return [records[run.key].result() for run in runs]


def warmup_steps(steps: int, share: float) -> int:
    """The trainer's warm-up: ``share`` of the run's steps, rounded down, at least one."""
    return max(1, int(round(steps * share, 6)))


def loss_curve(log_text: str, samples_per_epoch: int) -> pd.DataFrame:
    """The trainer's logged contrastive loss against samples seen (``epoch``, ``samples``, ``loss``)."""
    rows = [(int(epoch), int(epoch) * samples_per_epoch + int(seen), float(loss))
            for epoch, seen, _, loss in LOSS_LINE.findall(log_text)]
    if not rows:
        raise ValueError("no 'Train Epoch ... Contrastive_loss' lines in the trainer's log")
    return pd.DataFrame(rows, columns=["epoch", "samples", "loss"])
