"""The Fashion-MNIST ablation: variants as flag sets over the normal run, seeds, resume, report."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ablation
from parameter import get_parameters, model_config
from test_fmnist import fake_fmnist

TINY = shlex.split("--g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 8")


def test_variants_resolve_and_residual_controls_match_attention_parameters(capsys: pytest.CaptureFixture) -> None:
    counts = {name: ablation.variant_counts(flags) for name, flags in ablation.FMNIST_VARIANTS}
    for name, flags in ablation.FMNIST_VARIANTS:
        cfg = model_config(get_parameters(["--preset", "fmnist_32", *ablation.FMNIST_BASE, *shlex.split(flags)]), 10)
        assert cfg.imsize == 32 and cfg.num_classes == 10
    for place in ("8", "16", "32 (G; D at 16)"):
        att, res = sum(counts[f"attention {place}" + (" (SAGAN)" if place == "16" else "")]), sum(counts[f"residual {place}"])
        assert abs(res - att) <= 0.05 * att, (place, att, res)
    assert sum(counts["no attention"]) < sum(counts["attention 16 (SAGAN)"])
    assert counts["attention 16 (SAGAN)"] == (380_804, 68_450)  # the ablation's base: fmnist_32's first version
    assert {k for k in counts if k.startswith(("attention", "residual"))} >= {"attention 8", "residual 8", "residual 16"}
    names = {n for n, _ in ablation.FMNIST_VARIANTS}
    assert {"no SN on G", "equal rates 4e-4", "equal rates 1.6e-3, n_dis 5", "no attention"} <= names
    assert ablation.main(["--dataset", "fashion_mnist", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name in names) and "| 380,804 | 68,450 |" in out


def _has_colour(img: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool((np.asarray(img.convert("RGB")) == np.array(colour, dtype=np.uint8)).all(-1).any())


def test_the_accuracy_plot_has_a_panel_per_question_with_one_colour_per_variant() -> None:
    names = [n for n, _ in ablation.FMNIST_VARIANTS]
    curves = {n: ([150, 300], [10.0 + k, 20.0 + 2 * k], [9.0 + k, 18.0 + k], [11.0 + k, 22.0 + 3 * k]) for k, n in enumerate(names)}
    plot = ablation.accuracy_plot(curves, 300)
    assert plot.size == (900, 36 + 3 * 420)  # no "other variants" panel: every variant belongs to a question
    panels = [plot.crop((72, 36 + 420 * k + 54, 900 - 262, 36 + 420 * (k + 1) - 52)) for k in range(3)]  # inside the axes
    colour = {n: ablation.visualize.PALETTE[k] for k, n in enumerate(names)}
    for panel, (_, members) in zip(panels, ablation.FMNIST_PANELS):
        assert _has_colour(panel, colour[ablation.FMNIST_BASELINE])
        for n in names:
            assert _has_colour(panel, colour[n]) == (n in members), n
    assert {n for _, m in ablation.FMNIST_PANELS for n in m} == set(names)
    extra = ablation.accuracy_plot({**curves, "something new": ([150, 300], [5.0, 6.0], [4.0, 5.0], [6.0, 7.0])}, 300)
    assert extra.size == (900, 36 + 4 * 420)  # a variant that no panel names gets its own


def test_the_accuracy_curve_averages_each_step_over_every_seed() -> None:
    def run(accs: dict[int, float]) -> list[dict]:
        return [{"step": k, "cls_acc": v} for k, v in accs.items()]

    # The first seed lacks step 450 (stopped during that evaluation): no point mixes steps or seeds.
    steps, mean, lo, hi = ablation.accuracy_curve([run({150: 0.1, 300: 0.2, 600: 0.4}),
                                                   run({150: 0.3, 300: 0.2, 450: 0.9, 600: 0.6})])
    assert steps == [150, 300, 600]
    assert mean == pytest.approx([20.0, 20.0, 50.0]) and lo == pytest.approx([10.0, 20.0, 40.0]) and hi == pytest.approx([30.0, 20.0, 60.0])


@pytest.mark.slow
def test_two_variants_two_seeds_write_the_table_plot_and_grids_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    fake_fmnist(tmp_path / "fm", n_train=64, n_test=40)
    argv = ["--dataset", "fashion_mnist", "--seeds", "2", "--only", "1,residual_16", "--eval_every", "1",
            "--eval_samples", "20", "--out", "abl", "--data_dir", str(tmp_path / "fm"), *TINY]
    assert ablation.main(argv + ["--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == 4  # 2 variants x 2 seeds, through main.py's own entry point
    table = (tmp_path / "abl/table.md").read_text()
    assert "2 steps, seeds [0, 1], 20 samples per evaluation" in table
    for name in ("attention 16 (SAGAN)", "residual 16"):
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
        # 7 figures at the end, 6 at the best step (chosen by class accuracy, reported with the others); 2 seeds
        assert row.count("±") == 13 and row.split("|")[-3].strip() == "2", row
    assert "larger than the sum of the two standard deviations" in table and "Compute: 4 finished runs" in table
    assert len(list((tmp_path / "abl/cache/classifier").glob("*.pt"))) == 2  # every seed is scored by the same two classifiers
    assert "the best step is each seed's highest class accuracy (tuning classifier), reported with the other figures" in table
    results = json.loads((tmp_path / "abl/results.json").read_text())
    assert [r["seeds_done"] for r in results["rows"]] == [[0, 1], [0, 1]]
    assert all(0 <= r["cls_acc_end"][0] <= 1 and r["G_params"] > 0 for r in results["rows"])
    with Image.open(tmp_path / "abl/cls_acc.png") as plot:  # the baseline is in all three panels, residual 16 in (b)
        assert plot.size == (900, 36 + 3 * 420) and len(np.unique(np.asarray(plot.convert("RGB")).reshape(-1, 3), axis=0)) > 10
    for name in ("attention_16_SAGAN", "residual_16"):
        with Image.open(tmp_path / f"abl/grids/{name}.png") as grid:
            assert grid.size[0] > 100
    with Image.open(tmp_path / "abl/grids.png") as sheet:  # both grids side by side, under their names
        assert sheet.size == (2 * grid.size[0], 36 + 22 + grid.size[1])
    for seed in (0, 1):  # one evaluation per step, and the grid from the last step
        records = [json.loads(ln) for ln in (tmp_path / f"abl/models/residual_16_s{seed}/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2] and all("gan_train_acc" in r for r in records)
    # Run again: finished runs are kept as they are.
    before = (tmp_path / "abl/models/residual_16_s1/2.pt").stat().st_mtime_ns
    assert ablation.main(argv + ["--steps", "2"]) == 0
    assert "== " not in capsys.readouterr().out
    assert (tmp_path / "abl/models/residual_16_s1/2.pt").stat().st_mtime_ns == before
    # Longer: every run resumes from its latest checkpoint.
    assert ablation.main(argv + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("resumed from abl/models/") == 4 and "at step 2" in out
    assert "3 steps, seeds [0, 1]" in (tmp_path / "abl/table.md").read_text()
