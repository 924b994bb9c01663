"""metrics.py offline: an InceptionV3 with random weights, saved in the real weights file's format,
drives the whole pipeline. Numbers from it are meaningless as quality scores; the tests check the
plumbing (caching, sampling, modes, files) and the arithmetic (FID against scipy)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

import fakedata
from data_loader import Shapes
from main import main
from metrics import (EvalError, Evaluator, Features, Inception, compute_metrics, fid_from_stats, reference_stats,
                     resolve_weights, to_uint8, write_samples)
from sagan_models import Generator, ModelConfig, standing_stats

TINY_G = dict(arch="resnet", imsize=32, z_dim=16, g_conv_dim=8, d_conv_dim=8)
TRAIN = shlex.split("--dataset shapes --imsize 32 --max_images 64 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 "
                    "--batch_size 8 --num_workers 0 --log_step 1 --sample_step 100 --model_save_step 100")


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fakedata.inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="session")
def net(weights: Path) -> Inception:
    return Inception(weights, torch.device("cpu"))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _generator(num_classes: int) -> Generator:
    torch.manual_seed(1)
    return Generator(ModelConfig(num_classes=num_classes, **TINY_G).resolved())


def test_random_inception_file_loads_like_the_real_one(weights: Path, net: Inception) -> None:
    sd = torch.load(weights, weights_only=True)
    assert "Mixed_7c.branch_pool.conv.weight" in sd and sd["fc.weight"].shape == (1008, 2048)
    assert not net.official and len(net.sha256) == 64
    x = to_uint8(torch.rand(3, 3, 32, 32) * 2 - 1)
    pool, logits = net(x)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    assert torch.isfinite(pool).all() and pool.std() > 1e-3  # features carry signal


def test_uint8_matches_what_save_image_writes(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision.utils import save_image

    x = torch.rand(1, 3, 8, 8) * 2.2 - 1.1  # includes out-of-range values
    save_image(x * 0.5 + 0.5, tmp_path / "a.png")
    png = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1)
    assert torch.equal(to_uint8(x)[0], png)


def test_missing_weights_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(EvalError, match="bash download.sh inception"):
        resolve_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(EvalError, match=str(tmp_path / "data")):
        resolve_weights(None, str(tmp_path / "data"))
    w = tmp_path / "env.pth"
    w.write_bytes(b"not a torch file")
    monkeypatch.setenv("SAGAN_INCEPTION_WEIGHTS", str(w))
    assert resolve_weights(None) == w
    with pytest.raises(EvalError, match="not a readable weights file"):
        Inception(w, torch.device("cpu"))


def test_inception_without_torch_fidelity_is_one_line(tmp_path: Path, no_torch_fidelity: None) -> None:
    w = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, w)
    with pytest.raises(EvalError, match="need torch-fidelity, which is not installed: pip install torch-fidelity==0.4.0"):
        Inception(w, torch.device("cpu"))


def test_reference_cache_reused_and_invalidated(net: Inception, tmp_path: Path) -> None:
    ds = Shapes(32, size=24)
    first = reference_stats(ds, "shapes", 32, net, tmp_path, n_ref=0)
    again = reference_stats(ds, "shapes", 32, net, tmp_path, n_ref=0)
    assert not first["cache"]["hit"] and again["cache"]["hit"]
    assert again["cache"]["path"] == first["cache"]["path"]
    assert torch.equal(first["pool"], again["pool"]) and first["pool"].shape == (24, 2048)
    other_size = reference_stats(Shapes(64, size=24), "shapes", 64, net, tmp_path, n_ref=0)
    assert not other_size["cache"]["hit"] and other_size["cache"]["path"] != first["cache"]["path"]
    fewer = reference_stats(ds, "shapes", 32, net, tmp_path, n_ref=12)  # a 12-image reference subset
    assert not fewer["cache"]["hit"] and fewer["pool"].shape == (12, 2048)
    changed = Shapes(32, size=24)
    changed.images[5] = 255 - changed.images[5]  # same size and name, different pixels
    changed.images[0] = 255 - changed.images[0]
    assert not reference_stats(changed, "shapes", 32, net, tmp_path, n_ref=0)["cache"]["hit"]
    assert len(list((tmp_path / "refstats").glob("*.pt"))) == 4


def test_reference_cache_sees_changed_files(net: Inception, tmp_path: Path) -> None:
    from data_loader import DataSpec, build_dataset

    fakedata.celeba(tmp_path / "data", n=10)
    args = DataSpec(dataset="celeb", image_path=str(tmp_path / "data"), data_dir=None, imsize=32,
                    lsun_category="church_outdoor", max_images=0, full_decode=False)
    ds, _ = build_dataset(args)
    assert not reference_stats(ds, "celeb", 32, net, tmp_path, 0)["cache"]["hit"]
    assert reference_stats(build_dataset(args)[0], "celeb", 32, net, tmp_path, 0)["cache"]["hit"]
    (tmp_path / "data" / "CelebA" / "img_align_celeba" / "000010.jpg").unlink()  # one image fewer
    assert not reference_stats(build_dataset(args)[0], "celeb", 32, net, tmp_path, 0)["cache"]["hit"]


@pytest.mark.parametrize("num_classes", [0, 4])
def test_generator_and_folder_agree_and_mode_restored(weights: Path, tmp_path: Path, num_classes: int) -> None:
    ev = Evaluator(Shapes(32, size=24), "shapes", 32, weights, torch.device("cpu"), tmp_path, n_ref=0)
    G = _generator(num_classes)
    for mode, n in ((True, 10), (False, 20)):
        G.train(mode)
        res = ev(G, n)
        assert G.training is mode  # evaluation samples in eval mode, then gives the mode back
    m = res["metrics"]
    assert m["samples"] == 20 and m["ref_samples"] == 24
    assert m["is_10splits"] >= 1.0 and m["is_1split"] >= 1.0 and m["fid"] > 0
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    files = write_samples(G, tmp_path / "fakes", 20)
    assert len(files) == 20
    if num_classes:
        labels = {int(f.stem.split("_c")[1]) for f in files}
        assert labels <= set(range(num_classes)) and len(labels) > 1  # uniform labels, more than one class
    from_folder = ev.folder(tmp_path / "fakes")["metrics"]
    for k in ("is_10splits", "is_1split", "fid", "kid", "precision", "recall"):
        assert from_folder[k] == pytest.approx(m[k], rel=1e-6, abs=1e-9), k
    assert m["truncation"] == 0.0 and "truncation" not in from_folder  # a folder's images have no known z
    ev.truncation = 0.5  # --truncation 0.5: other z, other samples, the same labels
    t = ev(G, 20)
    assert t["metrics"]["truncation"] == 0.5 and t["metrics"]["fid"] != m["fid"]
    assert "  20, z truncated to [-0.5, 0.5]" in ev.format(t) and set(ev.scalars(t["metrics"])) >= {"metrics/fid20_trunc0.5"}
    trunc_files = write_samples(G, tmp_path / "trunc", 20, truncation=0.5)
    assert [f.name for f in trunc_files] == [f.name for f in files]
    s = ev(standing_stats(G, 4, batch_size=8), 20)  # --standing_stats 4: G's statistics recomputed; the result says so
    assert s["metrics"]["standing_stats"] == 4 and "standing_stats" not in t["metrics"]
    assert "z truncated to [-0.5, 0.5], G's batch-norm statistics recomputed over 4 batches" in ev.format(s)
    assert set(ev.scalars(s["metrics"])) >= {"metrics/fid20_trunc0.5_ss4"}
    assert "standing_stats" not in ev.folder(tmp_path / "fakes")["metrics"]  # nothing was recomputed for a folder


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy() -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(0)
    # Synthetic features with more samples than dimensions, so that both covariances are full rank.
    a = rng.normal(size=(1200, 256)) @ rng.normal(size=(256, 256)) * 0.1
    b = rng.normal(size=(1000, 256)) @ rng.normal(size=(256, 256)) * 0.1 + 0.3
    fa = Features(torch.from_numpy(a).float(), torch.zeros(len(a), 1008))
    fb = Features(torch.from_numpy(b).float(), torch.zeros(len(b), 1008))
    sa, sb = fid_features_to_statistics(fa.pool), fid_features_to_statistics(fb.pool)
    assert abs(fid_from_stats(sa["mu"], sa["sigma"], sa["mu"], sa["sigma"])) < 1e-6 * np.trace(sa["sigma"])
    assert fid_from_stats(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"]) == \
        fid_statistics_to_metric(sa, sb, False)["frechet_inception_distance"]  # torch-fidelity's own figure, exactly
    ref = {"mu": torch.from_numpy(sb["mu"]), "sigma": torch.from_numpy(sb["sigma"]), "pool": fb.pool}
    ours = compute_metrics(fa, ref)["fid"]
    # Independent: numpy statistics in float64 and scipy's matrix square root.
    xa, xb = fa.pool.double().numpy(), fb.pool.double().numpy()
    mu_a, mu_b = xa.mean(0), xb.mean(0)
    ca, cb = np.cov(xa, rowvar=False), np.cov(xb, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    expected = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_evaluation_command_prints_table_and_writes_json(weights: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(TRAIN + ["--total_step", "2", "--version", "ev"]) == 0
    capsys.readouterr()
    flags = ["--inception_weights", str(weights), "--eval_cache_dir", str(workdir / "cache"), "--eval_ref_samples", "32",
             "--version", "ev"]
    assert main(["--train", "false", "--pretrained_model", "2", "--eval_samples", "20", "--sample_dir",
                 str(workdir / "pngs"), "--sample_num", "12"] + flags) == 0
    out = capsys.readouterr().out
    for row in ("IS (10 splits)", "IS (1 split)", "FID", "KID", "precision", "recall", "samples", "reference", "weights",
                "NOT the TF-Inception 2015-12-05 file"):
        assert row in out
    result = json.loads((workdir / "models" / "ev" / "eval_2_20.json").read_text())
    assert result["metrics"]["samples"] == 20 and result["reference"]["n"] == 32
    assert result["reference"]["dataset"] == "shapes" and result["weights"]["sha256"] in out
    assert len(list((workdir / "pngs").glob("*.png"))) == 12
    assert main(["--train", "false", "--eval_dir", str(workdir / "pngs"), "--imsize", "32", "--max_images", "64"] + flags) == 0
    assert "cache hit" in capsys.readouterr().out
    assert json.loads((workdir / "pngs_eval_12.json").read_text())["metrics"]["samples"] == 12


def test_missing_weights_fail_before_sampling(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    missing = ["--inception_weights", str(workdir / "missing.pth")]
    assert main(TRAIN + ["--total_step", "2", "--eval_step", "1", "--version", "mw"] + missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Inception weights not found") and "download.sh inception" in err[0]
    assert not (workdir / "samples" / "mw").exists() and not (workdir / "models" / "mw").exists()
    assert main(TRAIN + ["--total_step", "2", "--version", "mw"]) == 0
    capsys.readouterr()
    assert main(["--train", "false", "--eval_samples", "20", "--version", "mw"] + missing) == 2
    assert not (workdir / "samples" / "mw" / "2_sample.png").exists()


def test_evaluation_does_not_change_training(weights: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    def run(version: str, *extra: str) -> tuple[list[str], dict]:
        assert main(TRAIN + ["--total_step", "4", "--version", version, *extra]) == 0
        lines = [ln.split(" s/step")[0].rsplit(" ", 1)[0] for ln in capsys.readouterr().out.splitlines()
                 if ln.startswith("step ")]
        return lines, torch.load(workdir / "models" / version / "4.pt", weights_only=True)

    plain_lines, plain = run("plain")
    ev_lines, ev = run("with_eval", "--eval_step", "2", "--eval_samples", "10", "--eval_ref_samples", "16",
                       "--inception_weights", str(weights), "--eval_cache_dir", str(workdir / "cache"))
    assert plain_lines == ev_lines and len(plain_lines) == 4
    for k in plain["G"]:
        assert torch.equal(plain["G"][k], ev["G"][k]), k
    for k in plain["D"]:
        assert torch.equal(plain["D"][k], ev["D"][k]), k
    records = [json.loads(ln) for ln in (workdir / "models" / "with_eval" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(r["samples"] == 10 for r in records)
    best = torch.load(workdir / "models" / "with_eval" / "best_fid.pt", weights_only=True)
    assert best["step"] == min(records, key=lambda r: r["fid"])["step"]
    assert best["best"]["fid"] == pytest.approx(min(r["fid"] for r in records))
    assert (workdir / "models" / "with_eval" / "best_is.pt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir / "logs" / "with_eval"))
    acc.Reload()
    assert {"metrics/fid10", "metrics/is10", "metrics/is10_1split", "metrics/kid10"} <= set(acc.Tags()["scalars"])
