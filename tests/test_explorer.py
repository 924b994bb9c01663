"""The attention explorer in a real browser: headless Chromium opens the file (file://, no server, no network),
the pointer moves to two query points, and each layer's heat-map canvas must change and equal the model's own
attention row for that query (G's layer, and D's on the same sample). In CI a missing browser is a failure
(.ci/run installs it); elsewhere the test is skipped with the command that installs it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import torch

import explorer
import visualize
from browser import Browser, find_chromium
from checkpoints import load_discriminator, load_generator
from main import main

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--dataset shapes --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 4 --num_workers 0 --device cpu "
         "--log_step 1 --use_tensorboard false --version explore --attn_samples 2 --span 1")


def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium in CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no Chromium: apt-get install chromium")
    return binary


def test_pointing_at_two_pixels_shows_each_layers_attention_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = chromium()
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(FLAGS + " --total_step 4 --sample_step 4 --model_save_step 4")) == 0
    assert main(shlex.split(FLAGS + " --train false --attn_html true")) == 0
    page = tmp_path / "attn" / "explore" / "4_explorer.html"
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "@import" not in html and "<link" not in html  # self-contained
    # The model's own attention for the page's first sample (class 0's first: --seed 0 + 2, 2 samples x 4 classes).
    G, D = load_generator(tmp_path / "models" / "explore").G, load_discriminator(tmp_path / "models" / "explore")
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor(visualize.class_rows(4, 4)).repeat_interleave(2)
    with torch.no_grad():
        img, g_maps = G(z[:1], y[:1], return_attn=True)
        _, d_maps = D(img, y[:1], return_attn=True)
    maps = [m[0] for m in g_maps + d_maps]  # (N, M) per layer: G's, then D's
    assert len(maps) == 2

    b = Browser(binary)
    try:
        b.open(page)
        assert b.evaluate("document.body.dataset.ready") == "0"
        assert b.evaluate("document.querySelectorAll('#thumbs img').length") == 2
        assert b.evaluate("Array.from(document.querySelectorAll('#class option')).map(o => o.textContent)") == \
            ["circle", "square", "triangle", "cross"]
        seen = []
        for x, y_ in ((5, 6), (26, 20)):
            b.point_at("main", x, y_, 32)
            assert b.wait_for(f"document.body.dataset.query === '{x},{y_}'")
            for k, attn in enumerate(maps):
                h, kh = int(attn.shape[0] ** 0.5), int(attn.shape[1] ** 0.5)
                red = b.evaluate(f"Array.from(document.getElementById('heat{k}').getContext('2d')"
                                 f".getImageData(0, 0, {kh}, {kh}).data).filter((v, i) => i % 4 === 0)")
                q = (y_ * h // 32) * h + (x * h // 32)
                expected = explorer.row_uint8(attn)[q].tolist()
                assert red == expected, (k, x, y_)
                seen.append(red)
        assert seen[0] != seen[2] and seen[1] != seen[3]  # each layer's map changed with the query
        gammas = b.evaluate("DATA.layers.map(L => L.gamma)")
        assert gammas == pytest.approx([float(m.gamma) for m in G.modules() if hasattr(m, "pooled")] +
                                       [float(m.gamma) for m in D.modules() if hasattr(m, "pooled")])
        b.screenshot(ROOT / "docs" / "attention_explorer_test.png")  # the tiny test model's page, as the browser drew it
    finally:
        b.close()
