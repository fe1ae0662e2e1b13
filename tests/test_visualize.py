"""The picture of what ELIP prunes: size, content per patch, and the CLI on the tiny model."""
import numpy as np
import pytest
import torch
from conftest import TINY_ELIP, TINY_STOCK, digit_samples
from PIL import Image

from open_clip_elip import BlockTrace, visualize


def test_cli_writes_a_png_of_the_expected_size(tiny_configs, tmp_path):
    image, caption, _ = next(digit_samples(1))
    image.save(tmp_path / "digit.png")
    out = tmp_path / "figure.png"
    visualize.main(["--model", TINY_ELIP, "--image", str(tmp_path / "digit.png"), "--caption", caption,
                    "--out", str(out), "--panel-size", "100"])
    figure = Image.open(out)
    assert figure.format == "PNG"
    # 8 x 8 patches at 12 px = 96 px panels; the image and 3 pruned blocks; margins of 8 px
    panel = 8 * (100 // 8)
    width = 4 * panel + 5 * visualize.MARGIN
    height = visualize.TITLE_HEIGHT + panel + visualize.FOOTER_HEIGHT + 2 * visualize.MARGIN
    assert figure.size == (width, height) == visualize.figure_size(4, (panel, panel))
    first = np.asarray(figure)[visualize.MARGIN + visualize.TITLE_HEIGHT:][:panel, visualize.MARGIN:][:, :panel]
    assert first.std() > 0  # the digit is drawn


def test_panel_dims_pruned_patches_and_tints_them_by_merged_share():
    # 2 x 2 patches: 0 kept, 1 kept inside an earlier merged token (with 2), 3 pruned (merged)
    provenance = torch.tensor([[[1.0, 0.0, 0.0, 0.0],
                                [0.0, 0.5, 0.5, 0.0],
                                [0.0, 0.0, 0.0, 1.0]]])
    trace = BlockTrace(block=2, keep_index=torch.tensor([[0, 1]]), provenance=provenance)
    kept, merged = visualize.patch_shares(trace)
    np.testing.assert_allclose(kept, [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(merged, [0.0, 0.0, 0.0, 1.0])
    grey = Image.new("RGB", (20, 20), (200, 200, 200))
    panel = np.asarray(visualize.render_panel(grey, (2, 2), kept, merged)).astype(int)
    assert (panel[:10, :10] == 200).all()  # kept: unchanged
    assert (panel[3:7, 13:17] == 200).all() and (panel[0, 10:] != 200).any()  # inherited: outlined only
    pruned = panel[15, 15]
    assert pruned[0] > pruned[2] and tuple(pruned) != (200, 200, 200)  # dimmed, tinted orange


def test_figure_has_one_panel_per_trace():
    grid = (2, 2)
    traces = [BlockTrace(b, torch.tensor([[0, 1]]), torch.eye(4)[[0, 1]].unsqueeze(0)) for b in (1, 2)]
    figure = visualize.draw_figure(Image.new("RGB", (16, 16), "gray"), grid, traces, "a caption", 64)
    assert figure.size == visualize.figure_size(3, visualize.panel_size(grid, 64))


def test_rejects_a_model_without_elip(tiny_configs, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="-elip"):
        visualize.visualize(TINY_STOCK, str(tmp_path / "x.png"), "a caption")
