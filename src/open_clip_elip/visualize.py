"""A picture of what ELIP prunes: ``python -m open_clip_elip.visualize``.

The image (as the model's preprocess sees it) beside one panel per pruned block: patches
that survive (have weight in a kept token) are shown as they are, outlined when they survive
only inside a merged token of an earlier block that was kept; pruned ones are dimmed and
tinted orange by their share of the block's merged token. Uses PIL only.
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence, Tuple

import numpy as np
import open_clip
import torch
from PIL import Image, ImageDraw, ImageFont

from .families.elip.model import BlockTrace, ElipVisionTransformer

MARGIN = 8
TITLE_HEIGHT = 20
FOOTER_HEIGHT = 36  # two lines: caption, legend
DIM = 0.3  # brightness of pruned patches
TINT = np.array([255.0, 140.0, 0.0])  # merged share
TINT_MAX = 0.85
INHERITED_EPS = 1e-4  # a kept weight below 1 - eps: the patch lives in a kept merged token
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII")


def panel_size(grid: Tuple[int, int], requested: int) -> Tuple[int, int]:
    """Panel (width, height): a whole number of pixels per patch, about ``requested`` wide."""
    cell = max(1, requested // max(grid))
    return grid[1] * cell, grid[0] * cell


def figure_size(num_panels: int, panel: Tuple[int, int]) -> Tuple[int, int]:
    """Figure (width, height) for ``num_panels`` panels side by side (the image included)."""
    width = num_panels * panel[0] + (num_panels + 1) * MARGIN
    return width, TITLE_HEIGHT + panel[1] + FOOTER_HEIGHT + 2 * MARGIN


def patch_shares(trace: BlockTrace, sample: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per original patch: its weight in the kept tokens and its weight in the merged token
    (zeros when nothing was merged), from the trace's provenance."""
    provenance = trace.provenance[sample].float()
    num_kept = trace.keep_index.shape[1]
    kept = provenance[:num_kept].sum(0)
    merged = provenance[num_kept] if provenance.shape[0] > num_kept else torch.zeros_like(kept)
    return kept.cpu().numpy(), merged.cpu().numpy()


def render_panel(image: Image.Image, grid: Tuple[int, int], kept: np.ndarray, merged: np.ndarray) -> Image.Image:
    """``image`` (the panel's size) with pruned patches dimmed and tinted by their merged share,
    and patches kept only inside an earlier merged token outlined."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    cell = (pixels.shape[0] // grid[0], pixels.shape[1] // grid[1])
    pruned = (kept <= 0).reshape(grid)
    tint = np.where(pruned, merged.reshape(grid), 0.0)
    tint = TINT_MAX * tint / tint.max() if tint.max() > 0 else tint
    brightness = np.kron(np.where(pruned, DIM, 1.0), np.ones(cell))[..., None]
    alpha = np.kron(tint, np.ones(cell))[..., None]
    pixels = (pixels * brightness) * (1 - alpha) + TINT * alpha
    panel = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for row, col in zip(*np.nonzero(((kept > 0) & (kept < 1 - INHERITED_EPS)).reshape(grid))):
        box = (col * cell[1], row * cell[0], (col + 1) * cell[1] - 1, (row + 1) * cell[0] - 1)
        draw.rectangle(box, outline=tuple(int(c) for c in TINT))
    return panel


def block_name(block: int) -> str:
    return ROMAN[block] if block < len(ROMAN) else str(block + 1)


def draw_figure(image: Image.Image, grid: Tuple[int, int], traces: Sequence[BlockTrace], caption: str,
                requested_panel: int = 224) -> Image.Image:
    """The figure: ``image`` and one panel per trace, titled with block name and token count."""
    panel = panel_size(grid, requested_panel)
    base = image.convert("RGB").resize(panel, Image.NEAREST if image.width < panel[0] else Image.BICUBIC)
    panels = [(f"image: {grid[0] * grid[1] + 1} tokens", base)]
    for trace in traces:
        kept, merged = patch_shares(trace)
        tokens = trace.provenance.shape[1] + 1
        panels.append((f"block {block_name(trace.block)}: {tokens} tokens", render_panel(base, grid, kept, merged)))
    figure = Image.new("RGB", figure_size(len(panels), panel), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for i, (title, picture) in enumerate(panels):
        left = MARGIN + i * (panel[0] + MARGIN)
        draw.text((left, MARGIN), _fit(draw, title, font, panel[0]), fill="black", font=font)
        figure.paste(picture, (left, MARGIN + TITLE_HEIGHT))
    footer = MARGIN + TITLE_HEIGHT + panel[1] + 4
    width = figure.width - 2 * MARGIN
    draw.text((MARGIN, footer), _fit(draw, f'caption: "{caption}"', font, width), fill="black", font=font)
    legend = "dimmed: pruned; orange: share of the merged token; outlined: kept inside an earlier merged token"
    draw.text((MARGIN, footer + 16), _fit(draw, legend, font, width), fill=(90, 90, 90), font=font)
    return figure


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def visualize(model_name: str, image_path: str, caption: str, out: Optional[str] = None,
              pretrained: Optional[str] = None, requested_panel: int = 224) -> Image.Image:
    """Encode ``caption``, run the ELIP image tower guided by it on ``image_path``, draw the figure."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    if not isinstance(model.visual, ElipVisionTransformer):
        raise ValueError(f"{model_name} has no ELIP image tower: pass an -elip model (e.g. ViT-B-16-elip)")
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        pixels = preprocess(Image.open(image_path).convert("RGB")).unsqueeze(0)
        text_features = model.encode_text(tokenizer([caption]), normalize=True)
        _, traces = model.visual.trace(pixels, text_features)
    mean = torch.tensor(model.visual.image_mean).view(3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(3, 1, 1)
    shown = (pixels[0] * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    figure = draw_figure(Image.fromarray(shown), tuple(model.visual.grid_size), traces, caption, requested_panel)
    if out:
        figure.save(out)
    return figure


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an -elip model, e.g. ViT-B-16-elip")
    parser.add_argument("--pretrained", default=None, help="checkpoint file (default: random weights)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--caption", required=True, help="the paired caption that guides pruning")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--panel-size", type=int, default=224, help="panel width in pixels (about)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    figure = visualize(args.model, args.image, args.caption, args.out, args.pretrained, args.panel_size)
    print(f"wrote {args.out} ({figure.width} x {figure.height})")


if __name__ == "__main__":
    main()
