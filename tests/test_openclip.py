"""``core.openclip``: its check passes on the installed OpenCLIP and fails on each thing it verifies when that thing
changes; on an OpenCLIP it cannot serve, registration leaves stock OpenCLIP exactly as it was, with one warning."""
import json
import subprocess
import sys

import open_clip
import pytest
import torch
from open_clip import factory

from open_clip_elip.core import openclip
from open_clip_elip.core.openclip import ResidualAttentionBlock, VisionTransformer


def test_the_installed_openclip_passes_the_check():
    assert openclip.check() == []
    assert openclip.usable()


def test_parse_model_name_falls_back_where_openclip_has_none(monkeypatch):
    names = ["ViT-B-32", "hf-hub:org/repo", "ViT-B-16-elip"]
    expected = [factory.parse_model_name(name) for name in names]
    assert expected[1] == ("hf-hub", "org/repo")
    monkeypatch.delattr(factory, "parse_model_name")  # as on OpenCLIP 2.32
    assert [openclip.parse_model_name(name) for name in names] == expected


EMBEDS = VisionTransformer._embeds


def wrong_pool(self, x):
    return x[:, 1], x  # a patch token instead of the normalised CLS


def wrong_forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
    return q_x + self.mlp(self.ln_2(q_x))  # no attention


def wrong_attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
    return torch.zeros_like(q_x)


@pytest.mark.parametrize("owner, name, value, says", [
    (VisionTransformer, "_pool", wrong_pool, "pool differs"),
    (VisionTransformer, "_embeds", lambda self, x: x, "embeds gives shape (2, 3, 8, 8)"),
    (VisionTransformer, "_embeds", lambda self: None, "a tiny ViT tower: TypeError"),
    (VisionTransformer, "_embeds", lambda self, x: self.ln_pre(EMBEDS(self, x)), "embeds differs"),
    (VisionTransformer, "forward", lambda self, x: self.proj[0].expand(x.shape[0], -1), "the tower's forward differs"),
    (ResidualAttentionBlock, "forward", wrong_forward, "a block's forward differs"),
    (ResidualAttentionBlock, "attention", wrong_attention, "a block's attention differs"),
    (open_clip, "__version__", "2.24.0", "version 2.24.0 is older than 2.32"),
])
def test_the_check_fails_when_what_it_verifies_changes(monkeypatch, owner, name, value, says):
    monkeypatch.setattr(owner, name, value)
    monkeypatch.setattr(openclip, "VERSION", open_clip.__version__)
    problems = openclip.check()
    assert any(says in problem for problem in problems), problems


@pytest.mark.parametrize("owner, name", [(factory, "CLIP"), (factory, "_MODEL_CONFIGS"), (VisionTransformer, "_pool"),
                                         (ResidualAttentionBlock, "attention")])
def test_the_check_names_what_is_missing(monkeypatch, owner, name):
    monkeypatch.delattr(owner, name)
    assert f"{owner.__name__}.{name} is missing" in openclip.check()


def test_the_check_reads_each_attention_attribute(monkeypatch):
    block = ResidualAttentionBlock(16, 2)
    assert openclip.attention_heads(block) == 2
    assert openclip.attention_in_proj(block)[0].shape == (48, 16)
    assert openclip.attention_out_proj(block)[0].shape == (16, 16)
    assert openclip.attention_dropout(ResidualAttentionBlock(16, 2)) == 0.0
    with_dropout = ResidualAttentionBlock(16, 2)
    with_dropout.attn = torch.nn.MultiheadAttention(16, 2, dropout=0.25, batch_first=True)  # as OpenCLIP 3.x builds it
    assert openclip.attention_dropout(with_dropout) == 0.25 and openclip.plain_attention(with_dropout)
    with_dropout.attn = torch.nn.MultiheadAttention(16, 2, batch_first=False)
    assert not openclip.plain_attention(with_dropout)
    monkeypatch.setattr(openclip, "attention_heads", lambda block: 1)
    assert openclip.check()  # heads read wrong: the recomputation differs


REFUSED = '''
import json, sys, warnings
import torch
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "OpenClipImportHook"]  # no start-up hook
import open_clip
import importlib
from open_clip import factory, model
hub = importlib.import_module("open_clip.push_to_hf_hub")
del factory._natural_key  # an OpenCLIP that lacks a name the package uses (and a stock model does not)
before = (factory.create_model, open_clip.create_model, factory.CLIP, hub.save_config_for_hf,
          dict(factory._MODEL_CONFIGS))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import open_clip_elip
    open_clip_elip.register()  # again: no second warning
after = (factory.create_model, open_clip.create_model, factory.CLIP, hub.save_config_for_hf,
         dict(factory._MODEL_CONFIGS))
stock = open_clip.create_model("ViT-B-32")
stock.encode_image(torch.zeros(1, 3, 224, 224))
print(json.dumps({"warnings": [str(w.message) for w in caught], "same": before == after,
                  "families": [m for m in open_clip.list_models() if m.endswith(("-elip", "-evit", "-tome"))],
                  "stock": type(stock) is model.CLIP}))
'''


def test_an_openclip_it_cannot_serve_is_left_as_it_was():
    out = subprocess.run([sys.executable, "-c", REFUSED], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["warnings"]) == 1, result
    warning = result["warnings"][0]
    assert f"OpenCLIP {open_clip.__version__} is not supported" in warning and openclip.SUPPORTED in warning
    assert "open_clip.factory._natural_key is missing" in warning
    assert result["same"] and result["stock"] and result["families"] == []
