"""recipes/train: each paper run's command (DRY_RUN=1) parses with open_clip_train's own parser and
carries the paper's settings; SLURM (srun) over several nodes; clear errors for bad GPU counts or data."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from open_clip_train.params import parse_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train"
# the paper's runs (docs/method.md, "The paper's settings"): script -> (model, first source, total batch)
PAPER_RUNS = {
    "vit-s16-cc3m-clip.sh": ("ViT-S-16", "cc3m", 1760),
    "vit-s16-cc3m-elip.sh": ("ViT-S-16-elip", "cc3m", 1760),
    "vit-s16-cc12m-clip.sh": ("ViT-S-16", "cc12m", 1760),
    "vit-s16-cc12m-elip.sh": ("ViT-S-16-elip", "cc12m", 1760),
    "vit-b16-cc3m-clip.sh": ("ViT-B-16", "cc3m", 920),
    "vit-b16-cc3m-elip.sh": ("ViT-B-16-elip", "cc3m", 920),
    "vit-b16-cc12m-clip.sh": ("ViT-B-16", "cc12m", 920),
    "vit-b16-cc12m-elip.sh": ("ViT-B-16-elip", "cc12m", 920),
}
SOURCES = ("cc3m", "cc12m", "sbu", "coco-shards")  # the folders recipes/data/*.sh write under DATA_ROOT


@pytest.fixture(scope="module")
def data_root(tiny_shard, tmp_path_factory):
    """DATA_ROOT with two shards per source, as the data recipes lay them out."""
    root = tmp_path_factory.mktemp("data")
    for source in SOURCES:
        (root / source).mkdir()
        for shard in ("00000.tar", "00001.tar"):
            shutil.copy(tiny_shard, root / source / shard)
    return root


def run_recipe(script, env, *args):
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(RECIPES / script), *args], capture_output=True, text=True, env=env,
                          timeout=120)


def trainer_args(stdout: str):
    """(launcher words, open_clip_train.main's parsed arguments) of a printed command."""
    words = shlex.split(stdout)
    main = words.index("open_clip_train.main")
    return words[:main], parse_args(words[main + 1:])


def test_every_paper_run_has_a_recipe():
    assert sorted(p.name for p in RECIPES.glob("vit-*.sh")) == sorted(PAPER_RUNS)


@pytest.mark.parametrize("script", sorted(PAPER_RUNS))
def test_recipe_command_has_the_paper_settings(script, tmp_path):
    model, _, total_batch = PAPER_RUNS[script]
    env = {"TRAIN_DATA": "/data/a/{00000..00009}.tar::/data/b/00000.tar", "TRAIN_NUM_SAMPLES": "4100000",
           "LOG_DIR": str(tmp_path / "logs")}
    result = run_recipe(script, env)
    assert result.returncode == 0, result.stderr
    launcher, args = trainer_args(result.stdout)
    assert launcher[1:3] == ["-m", "torch.distributed.run"]  # torchrun, of $PYTHON's environment
    assert launcher[launcher.index("--nproc_per_node") + 1] == "4"
    assert args.model == model
    assert (args.epochs, args.lr, args.wd, args.accum_freq) == (32, 1e-3, 0.1, 1)
    assert args.batch_size * 4 == total_batch
    assert args.dataset_type == "webdataset" and args.precision == "amp"
    assert (args.train_data, args.train_num_samples) == (env["TRAIN_DATA"], 4100000)
    assert args.resume == "latest" and args.logs == env["LOG_DIR"] and args.save_frequency == 1


@pytest.mark.parametrize("script", ["vit-s16-cc3m-elip.sh", "vit-b16-cc12m-clip.sh"])
def test_slurm_over_several_nodes_with_counted_shards(script, data_root):
    """slurm.sbatch on 2 nodes x 2 GPUs: srun, the paper's total batch, and the shards of the paper's
    mix (CC3M or CC12M, then SBU and MSCOCO) counted by the manifest step."""
    model, source, total_batch = PAPER_RUNS[script]
    env = {"DATA_ROOT": str(data_root), "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "2",
           "SLURM_CPUS_PER_TASK": "6"}
    result = subprocess.run(["bash", str(RECIPES / "slurm.sbatch"), str(RECIPES / script)], capture_output=True,
                            text=True, env={**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    launcher, args = trainer_args(result.stdout)
    assert launcher[0] == "srun"
    assert args.model == model and args.batch_size * 2 * 2 == total_batch and args.workers == 5
    sources = args.train_data.split("::")
    assert [Path(s).parent for s in sources] == [data_root / source, data_root / "sbu", data_root / "coco-shards"]
    assert args.train_num_samples == 3 * 2 * 64  # 3 sources x 2 shards x 64 samples


def test_given_train_data_skips_the_manifest(tmp_path):
    env = {"DATA_ROOT": str(tmp_path / "nothing"), "TRAIN_DATA": "/a/{0..9}.tar::/b/0.tar",
           "TRAIN_NUM_SAMPLES": "1234", "GPUS_PER_NODE": "8", "EPOCHS": "1"}
    result = run_recipe("vit-b16-cc3m-elip.sh", env)
    assert result.returncode == 0, result.stderr
    _, args = trainer_args(result.stdout)
    assert (args.train_data, args.train_num_samples, args.batch_size, args.epochs) == \
        ("/a/{0..9}.tar::/b/0.tar", 1234, 115, 1)


def test_gpu_count_that_does_not_divide_the_paper_batch_is_refused(tmp_path):
    result = run_recipe("vit-s16-cc3m-elip.sh", {"DATA_ROOT": str(tmp_path), "GPUS_PER_NODE": "3"})
    assert result.returncode == 2 and not result.stdout
    assert "1760 does not split evenly over 3 GPUs" in result.stderr


def test_missing_shards_say_how_to_build_them(tmp_path):
    result = run_recipe("vit-s16-cc12m-clip.sh", {"DATA_ROOT": str(tmp_path), "DRY_RUN": "0"})  # a real run
    assert result.returncode == 2 and not result.stdout
    assert "build them with recipes/data/*.sh" in result.stderr and "TRAIN_DATA" in result.stderr
