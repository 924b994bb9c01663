"""Discriminator rejection sampling (drs.py): the calibration, the acceptance rule, the sampler on a toy G and D
whose density ratio is known, and `--drs Q` from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import drs
from data_loader import Shapes
from metrics import EvalError, Evaluator, eval_latents, metric_tag, to_uint8
from parameter import get_parameters
from test_fmnist import fake_fmnist, tiny_run_flags
from test_metrics import weights  # noqa: F401 - the session's random-weight Inception file, a fixture


class BrightnessG(nn.Module):
    """A toy G: every pixel of a sample is tanh(z[0] / 2), so a sample's brightness is its first coordinate."""

    def __init__(self, num_classes: int = 3, imsize: int = 8) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(z_dim=4, num_classes=num_classes, imsize=imsize)
        self.anchor = nn.Parameter(torch.zeros(1))  # a device to read

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        s = self.cfg.imsize
        return torch.tanh(z[:, :1] / 2).view(-1, 1, 1, 1).expand(-1, 3, s, s) + 0 * self.anchor


class BrightnessD(nn.Module):
    """A toy D: the logit is `slope` times the mean brightness; it checks that labels come with every batch."""

    def __init__(self, slope: float, num_classes: int = 3) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(num_classes=num_classes)
        self.slope = slope

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        assert (y is not None) == bool(self.cfg.num_classes) and (y is None or len(y) == len(x))
        return self.slope * x.mean(dim=(1, 2, 3))


def real_bright(n: int = 600, imsize: int = 8) -> tuple[Tensor, Tensor]:
    """Real images brighter than G's: brightness tanh(u / 2) with u ~ N(1.5, 1)."""
    u = torch.randn(n, generator=torch.Generator().manual_seed(3)) + 1.5
    x = torch.tanh(u / 2).view(-1, 1, 1, 1).expand(-1, 3, imsize, imsize)
    return to_uint8(x), torch.arange(n) % 3


def test_platt_recovers_a_known_log_density_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(20000, generator=g) + 1.0, torch.randn(20000, generator=g) - 1.0
    a, b = drs.platt(real * 0.5, fake * 0.5)  # the raw logit is half of s, the log ratio N(1,1) : N(-1,1) is 2 s
    assert a == pytest.approx(4.0, rel=0.05) and b == pytest.approx(0.0, abs=0.05)


def test_acceptance_rises_with_the_logit_and_is_one_half_at_the_percentile() -> None:
    d = torch.linspace(-6.0, 2.0, 101)
    p = drs.acceptance(d, d_max=2.0, percentile=80.0)
    assert (p[1:] >= p[:-1]).all() and p[-1] > 0.999 and p[0] < 0.01
    assert p[80].item() == pytest.approx(0.5, abs=1e-6)  # the 80th percentile of 101 sorted values is the 81st
    below = drs.acceptance(d[:60], d_max=2.0, percentile=80.0)  # far below the maximum: close to exp(d - gamma)
    f = d[:60] - torch.log1p(-torch.exp(d[:60] - 2.0 - drs.EPS)) - 2.0
    assert torch.allclose(below, torch.sigmoid(f - torch.quantile(f, 0.8)).float(), atol=1e-6)


def test_the_sampler_keeps_the_labels_asked_for_and_moves_samples_toward_real_data() -> None:
    G, D = BrightnessG(), BrightnessD(slope=1.0)
    x, y = real_bright()
    s = drs.RejectionSampler(G, D, x, y, percentile=80.0, batch_size=50)
    assert s.scale > 0 and s.calibration == 600
    labels = torch.arange(300) % 3
    kept = s.draw(labels)
    plain = s.candidates_for(labels, 300)
    assert kept.shape == (300, 3, 8, 8) and kept.dtype == torch.uint8
    assert kept.float().mean() > plain.float().mean() + 10  # brighter, as the real images are
    assert kept.float().mean() < x.float().mean() + 10  # and not beyond them: D~ is a density ratio, not a ranking
    assert 0.05 < s.kept / s.candidates < 0.6 and s.kept == 300
    batches = list(s.generate(120, seed=7))
    assert [len(b) for b, _ in batches] == [50, 50, 20]
    assert torch.equal(torch.cat([l for _, l in batches]), eval_latents(120, 4, 3, 7)[1])  # the evaluation's own labels
    m = s.summary()
    assert m["drs"] == 80.0 and m["drs_candidates"] >= 120 and 0 < m["drs_acceptance"] <= 1


def test_the_sampler_is_repeatable_and_works_unconditionally() -> None:
    x, _ = real_bright()
    runs = []
    for _ in range(2):
        s = drs.RejectionSampler(BrightnessG(0), BrightnessD(1.0, 0), x, None, percentile=95.0, batch_size=40)
        runs.append(s.draw(None, 90))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (90, 3, 8, 8)


def test_a_d_that_prefers_g_to_real_data_is_one_error_line() -> None:
    x, y = real_bright()
    with pytest.raises(EvalError, match="does not score real images above G's"):
        drs.RejectionSampler(BrightnessG(), BrightnessD(slope=-1.0), x, y, percentile=80.0)
    with pytest.raises(ValueError, match=r"percentile in \(0, 100\)"):
        drs.RejectionSampler(BrightnessG(), BrightnessD(slope=1.0), x, y, percentile=100.0)
    with pytest.raises(EvalError, match="D has 5 classes, G 3"):
        drs.RejectionSampler(BrightnessG(), BrightnessD(1.0, num_classes=5), x, y, percentile=80.0)


def test_rejection_sampled_metrics_carry_the_percentile_in_their_names() -> None:
    assert metric_tag({"samples": 2000, "truncation": 1.5, "drs": 80.0}) == "2k_trunc1.5_drs80"
    assert metric_tag({"samples": 10000, "drs": 0.0}) == "10k"
    assert metric_tag({"samples": 2000, "truncation": 1.5, "standing_stats": 16, "drs": 80.0}) == "2k_trunc1.5_ss16_drs80"
    assert metric_tag({"samples": 2000, "standing_stats": 0}) == "2k"


def test_the_inception_evaluation_scores_the_kept_samples_and_names_them(weights: Path, tmp_path: Path) -> None:
    ev = Evaluator(Shapes(32, size=24), "shapes", 32, weights, torch.device("cpu"), tmp_path, n_ref=0)
    G = BrightnessG(imsize=32)
    plain = ev(G, 20)["metrics"]
    ev.drs = drs.RejectionSampler(G, BrightnessD(1.0), *real_bright(200, 32), percentile=80.0, batch_size=10)
    kept = ev(G, 20)
    m = kept["metrics"]
    assert m["drs"] == 80.0 and m["drs_candidates"] >= 20 and m["fid"] != plain["fid"] and "drs" not in plain
    assert "metrics/fid20_drs80" in ev.scalars(m) and "20, kept by DRS at the 80th percentile" in ev.format(kept)


def test_the_flag_takes_a_percentile(capsys: pytest.CaptureFixture) -> None:
    assert get_parameters(["--drs", "95"]).drs == 95.0 and get_parameters([]).drs == 0.0
    for bad in ("100", "-5", "nan"):
        with pytest.raises(SystemExit):
            get_parameters(["--drs", bad])
    with pytest.raises(SystemExit):
        get_parameters(["--train", "false", "--drs", "80", "--eval_dir", "some/folder"])
    assert "a folder of images (--eval_dir) has no D" in capsys.readouterr().err


@pytest.mark.slow
def test_drs_from_the_command_line_scores_and_draws_the_kept_samples(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from main import main

    fake_fmnist(workdir / "fm", n_train=120, n_test=40)
    base = tiny_run_flags(workdir, "--g_conv_dim", "8", "--d_conv_dim", "8", "--attn_samples", "0", "--version", "d")
    assert main([*base, "--eval_step", "0", "--sample_step", "100", "--model_save_step", "4"]) == 0
    capsys.readouterr()
    evaluate = ["--train", "false", *base, "--drs", "80", "--sample_dir", str(workdir / "kept"), "--sample_num", "12"]
    assert main(evaluate) == 0
    out = capsys.readouterr().out
    assert "DRS at the 80th percentile: D's logit calibrated on 120 real training images" in out
    assert "gan_test20_trunc1.5_drs80 (GAN-test: the lower of the two)" in out and "kept by DRS at the 80th percentile" in out
    saved = json.loads((workdir / "models/d/eval_4_20_trunc1.5_drs80.json").read_text())
    assert saved["metrics"]["drs"] == 80.0 and saved["metrics"]["drs_candidates"] >= 20
    assert len(list((workdir / "kept").glob("*_c*.png"))) == 12
    with Image.open(workdir / "samples/d/4_vs_real.png") as fig:
        assert fig.height == 24 + 10 * 64
