"""Run a module (default: OpenCLIP's unmodified trainer) with a probe on ELIP's guided forward.

    python tests/probe_run.py [-m MODULE] ARGS...   (also as a torchrun script)

Each process writes ``$ELIP_PROBE_DIR/rank<RANK>.json`` at exit: how many guided (pruning)
forwards ran in the image tower and the token counts it entered each block with.
"""
import atexit
import json
import os
import runpy
import sys
from pathlib import Path

from open_clip_elip import ElipVisionTransformer

calls = {"guided_forwards": 0, "tokens_per_block": None}
pruned_transformer = ElipVisionTransformer._pruned_transformer


def probed(self, x, text_embed, trace):
    calls["guided_forwards"] += 1
    calls["tokens_per_block"] = list(self.tokens_per_block(x.shape[1]))
    return pruned_transformer(self, x, text_embed, trace)


def write_report():
    folder = Path(os.environ["ELIP_PROBE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(calls))


ElipVisionTransformer._pruned_transformer = probed
atexit.register(write_report)
module = "open_clip_train.main"
if sys.argv[1:2] == ["-m"]:
    module = sys.argv[2]
    del sys.argv[1:3]
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
