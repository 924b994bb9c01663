"""visualize.py: attention overlays match the model's attention rows; class and interpolation grids."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visualize
from main import main
from sagan_models import Generator, ModelConfig

SMALL = dict(arch="resnet", imsize=32, z_dim=16, g_conv_dim=8, d_conv_dim=8, g_attn=(16,), d_attn=(16,))


def _g(variant: str = "official", span: int = 0, num_classes: int = 4) -> Generator:
    torch.manual_seed(3)
    G = Generator(ModelConfig(attn_variant=variant, span=span, num_classes=num_classes, **SMALL).resolved())
    with torch.no_grad():
        for layer in visualize.attention_layers(G):
            layer.gamma.fill_(0.5)
    return G.eval()


@pytest.mark.parametrize("variant,span", [("official", 0), ("paper", 0), ("official", 1), ("paper", 2)])
def test_overlay_is_the_query_row_upsampled(variant: str, span: int) -> None:
    G = _g(variant, span)
    z, y = torch.randn(2, 16), torch.tensor([1, 3])
    with torch.no_grad():
        _, maps = G(z, y, return_attn=True)
    (layer,) = visualize.attention_layers(G)
    a = maps[0][1]  # (N, M) of the second sample; the layer runs at 16x16
    keys = 8 if variant == "official" else 16
    assert a.shape == (256, keys * keys)
    for x, yy in [(0, 0), (13, 21), (31, 31), (16, 5)]:
        heat = visualize.query_heatmap(a, layer, (x, yy), 32)
        row = a[(yy // 2) * 16 + x // 2]  # the query under image pixel (x, y) at 16x16
        cell = 32 // keys
        expected = torch.stack([torch.stack([row[(py // cell) * keys + px // cell] for px in range(32)]) for py in range(32)])
        assert torch.equal(heat, expected)
        assert heat.sum() == pytest.approx(cell * cell * row.sum().item(), rel=1e-5)
        if span:
            box = visualize.excluded_box(layer, (x, yy), a.shape[0], 32)
            x0, y0, x1, y1 = box
            assert x0 <= x <= x1 and y0 <= yy <= y1
            inside = heat[y0:y1 + 1, x0:x1 + 1]
            assert (inside == 0).all() or (heat == 0).all()  # masked square (or a fully masked query)


def test_figure_panels_show_the_heatmap(tmp_path: Path) -> None:
    G = _g("official", span=1)
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    points = [(8, 8), (24, 20)]
    figs = visualize.attention_figures(G.train(), z, y, points)
    assert G.training  # mode restored
    scale, side = 4, 128
    assert len(figs) == 2 and figs[0].size == (2 * (side + 2), 2 * (side + 2))  # image + one layer, two points
    G.eval()
    with torch.no_grad():
        imgs, maps = G(z, y, return_attn=True)
    (layer,) = visualize.attention_layers(G)
    rgb = visualize._to_rgb(imgs[1])
    heat = visualize.colourise(visualize.query_heatmap(maps[0][1], layer, points[1], 32))
    blend = (0.45 * rgb + 0.55 * heat).round().astype(np.uint8)
    fig = np.asarray(figs[1])
    for px, py in [(2, 3), (30, 1), (5, 29)]:  # away from the marker and the mask outline
        got = fig[(side + 2) + py * scale + 1, (side + 2) + px * scale + 1]
        assert tuple(got) == tuple(blend[py, px])
    paths = visualize.save_figures(figs, tmp_path, "7")
    assert [p.name for p in paths] == ["7_attn0.png", "7_attn1.png"]
    assert Image.open(paths[0]).size == figs[0].size


def test_points_parse_and_errors() -> None:
    assert visualize.parse_points("1,2;30,31", 32) == [(1, 2), (30, 31)]
    assert len(visualize.parse_points(None, 64)) == 5
    with pytest.raises(ValueError, match="outside"):
        visualize.parse_points("40,2", 32)
    with pytest.raises(ValueError, match="x,y"):
        visualize.parse_points("1;2", 32)
    G = Generator(ModelConfig(num_classes=0, **{**SMALL, "g_attn": ()}).resolved())
    with pytest.raises(ValueError, match="no attention layers"):
        visualize.attention_figures(G, torch.randn(1, 16), None, [(0, 0)])


def test_class_grid_rows_use_requested_labels() -> None:
    G = _g()
    grid = visualize.class_grid(G, [2, 0, 3], columns=3, seed=5)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for r, c in enumerate([2, 0, 3]):
            expected = G(z, torch.full((3,), c))
            assert torch.allclose(grid[3 * r:3 * r + 3], expected, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        visualize.class_grid(G, [4])


def test_interpolation_endpoints_are_the_seed_samples() -> None:
    G = _g()
    grid = visualize.interpolation_grid(G, [(10, 11), (12, 13)], steps=5, classes=[1, 3])
    assert grid.shape == (10, 3, 32, 32)
    with torch.no_grad():
        for r, (a, b) in enumerate([(10, 11), (12, 13)]):
            y = torch.tensor([[1, 3][r]])
            start = G(visualize.seed_latent(a, 16)[None], y)
            end = G(visualize.seed_latent(b, 16)[None], y)
            assert torch.allclose(grid[5 * r], start[0], atol=1e-6) and torch.allclose(grid[5 * r + 4], end[0], atol=1e-6)
    a, b = visualize.seed_latent(1, 16), visualize.seed_latent(2, 16)
    mid = visualize.slerp(a, b, torch.tensor([0.5]))[0]
    assert mid.norm() == pytest.approx(((a.norm() + b.norm()) / 2).item(), rel=0.1)  # slerp keeps the norm, lerp shrinks it
    assert torch.equal(visualize.slerp(a, b, torch.tensor([0.0, 1.0]))[0], a)


def test_tile_places_each_image_under_its_label_in_rows() -> None:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    cells = [(f"v{k}", Image.new("RGB", (30, 20), c)) for k, c in enumerate(colours)]
    sheet = np.asarray(visualize.tile(cells, columns=2, title="t"))
    assert sheet.shape == (36 + 2 * (22 + 20), 2 * 30, 3)  # title, then two rows of (label strip, image)
    for k, c in enumerate(colours):
        x, y = 30 * (k % 2), 36 + 42 * (k // 2)
        assert (sheet[y + 22:y + 42, x:x + 30] == c).all()
        assert (sheet[y:y + 22, x:x + 30] < 100).any()  # the label is drawn above its image
    assert (sheet[36 + 42:, 30:] == 255).all()  # the row's empty cell stays white
    assert visualize.tile(cells[:1], columns=5).size == (30, 42)


def test_training_and_checkpoint_write_the_pictures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    base = shlex.split("--dataset shapes --imsize 32 --max_images 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 "
                       "--batch_size 4 --num_workers 0 --log_step 1 --version v --attn_variant paper --span 1")
    assert main(base + ["--total_step", "2", "--sample_step", "2", "--attn_samples", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "attn" / "v").iterdir()) == ["2_attn0.png", "2_attn1.png"]
    acc = EventAccumulator(str(tmp_path / "logs" / "v"))
    acc.Reload()
    assert {"attention/0", "attention/1"} <= set(acc.Tags()["images"])
    assert any(t.startswith("gamma/G.") for t in acc.Tags()["scalars"])
    out = capsys.readouterr().out
    assert "G.blocks.2=" in out and "D.blocks.1=" in out  # gammas in the plain log line
    assert main(base + ["--train", "false", "--classes", "3,1", "--interp_steps", "5", "--interp_rows", "2",
                        "--attn_points", "4,4;20,28;31,0"]) == 0
    samples = tmp_path / "samples" / "v"
    assert Image.open(samples / "2_classes.png").size == (2 + 8 * 34, 2 + 2 * 34)
    assert Image.open(samples / "2_interp.png").size == (2 + 5 * 34, 2 + 2 * 34)
    assert Image.open(tmp_path / "attn" / "v" / "2_attn0.png").size == (2 * 130, 3 * 130)
