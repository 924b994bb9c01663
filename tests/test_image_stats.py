"""image_stats.py: the foreground statistics on hand-made images, and the command on a tiny Fashion-MNIST run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_stats import STATS, image_stats, main as stats_main, table
from test_fmnist import fake_fmnist


def test_statistics_of_known_images() -> None:
    block = np.zeros((8, 8))
    block[2:6, 2:6] = 0.5  # 16 foreground pixels: 4 corners (|lap| 1.0), 8 edges (0.5), 4 inside (0)
    halves = np.zeros((8, 8))
    halves[1:7, 1:4], halves[1:7, 4:7] = 0.4, 0.8
    s = image_stats(np.stack([block, halves, np.zeros((8, 8))]))
    assert s["brightness"] == pytest.approx([0.5, 0.6, 0.0])
    assert s["area"] == pytest.approx([16 / 64, 36 / 64, 0.0])
    assert s["spread"] == pytest.approx([0.0, 0.2, 0.0])
    assert s["detail"][0] == pytest.approx((4 * 1.0 + 8 * 0.5) / 16)
    assert s["detail"][2] == 0.0
    shifted = image_stats(np.roll(block, 1, axis=1)[None])  # moving the object changes nothing
    assert all(shifted[k][0] == pytest.approx(s[k][0]) for k in STATS)


def test_table_sets_real_beside_generated_per_class() -> None:
    rng = np.random.default_rng(0)
    dark, light = rng.uniform(0.2, 0.3, (50, 8, 8)), rng.uniform(0.7, 0.8, (50, 8, 8))
    lines = table({0: dark, 1: dark}, {0: dark, 1: light}, ["dark", "light"]).splitlines()
    assert [ln.split()[0] for ln in lines] == ["q10/q50/q90", "dark", "light", "all"]
    real, fake = lines[2].split()[1:4:2]  # brightness: real | generated
    assert float(real.split("/")[1]) == pytest.approx(0.25, abs=0.01) and float(fake.split("/")[1]) == pytest.approx(0.75, abs=0.01)
    assert lines[1].split()[1] == lines[1].split()[3]  # the same images give the same figures


@pytest.mark.slow
def test_command_on_a_tiny_run_and_its_errors(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from main import main

    fake_fmnist(workdir / "fm", n_train=60, n_test=20)
    assert main(["--preset", "fmnist_32", "--data_dir", str(workdir / "fm"), "--total_step", "1", "--batch_size", "8",
                 "--g_conv_dim", "8", "--d_conv_dim", "8", "--attn_samples", "0", "--sample_step", "1", "--eval_step", "0",
                 "--model_save_step", "1", "--device", "cpu", "--use_tensorboard", "false", "--version", "fm"]) == 0
    capsys.readouterr()
    assert stats_main(["models/fm", "--n", "4", "--data_dir", str(workdir / "fm")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "4 images per class" in out[0] and [ln.split()[0] for ln in out[2:]] == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle", "all"]
    assert "z truncated to [-1.5, 1.5]" in out[0]  # the run's own --truncation (the preset's) by default
    assert stats_main(["models/fm", "--n", "4", "--data_dir", str(workdir / "fm"), "--truncation", "0"]) == 0
    assert "truncated" not in capsys.readouterr().out.splitlines()[0]
    for argv, words in ((["models/none"], "no checkpoint in models/none"),
                        (["models/fm", "--data_dir", str(workdir / "nowhere")], "Fashion-MNIST not found"),
                        (["models/fm", "--n", "0"], "--n 0"),
                        (["models/fm", "--truncation", "-1"], "truncation must be >= 0"),
                        (["models/fm", "--dataset", "shapes"], "pass the dataset the run was trained on")):
        assert stats_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err
