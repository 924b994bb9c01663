"""Fashion-MNIST (idx files written here), the offline classifier metric, and the fmnist_32 preset."""

from __future__ import annotations

import gzip
import json
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import data_loader
from classifier import ClassifierEvaluator, stack_uint8
from data_loader import DataSpec, DatasetError, FashionMNIST, Shapes, build_dataset, build_test_split
from parameter import get_parameters
from sagan_models import ModelConfig, truncate_latents


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    """The idx format: big-endian int32 magic (2051 images / 2049 labels) and dimensions, then uint8 data."""
    img_base, lab_base, _ = data_loader.FMNIST_FILES[split]
    folder.mkdir(parents=True, exist_ok=True)
    for base, magic, arr in ((img_base, 2051, images), (lab_base, 2049, labels)):
        raw = np.array([magic, *arr.shape], dtype=">i4").tobytes() + arr.astype(np.uint8).tobytes()
        if gz:
            (folder / f"{base}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / base).write_bytes(raw)


def fake_fmnist(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent 28x28 images: class c is a bright bar at row 2c+4 on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 7, 3:25] = 230
        write_idx(folder, split, images, labels, gz)
        out.append((images, labels))
    return out[0]


def args_for(folder: Path, imsize: int = 32) -> DataSpec:
    return DataSpec(dataset="fashion_mnist", image_path=str(folder.parent), data_dir=str(folder), imsize=imsize,
                    max_images=0, lsun_category="x", full_decode=False)


def tiny_run_flags(workdir: Path, *extra: str) -> list[str]:
    """A 4-step `--preset fmnist_32` run on the fake data in workdir/fm, evaluated on 20 samples (CPU, no TensorBoard)."""
    return ["--preset", "fmnist_32", "--data_dir", str(workdir / "fm"), "--total_step", "4", "--eval_samples", "20",
            "--batch_size", "8", "--device", "cpu", "--use_tensorboard", "false", "--eval_cache_dir", str(workdir / "cache"),
            *extra]


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_read_padded_and_replicated(tmp_path: Path, gz: bool) -> None:
    images, labels = fake_fmnist(tmp_path / "fm", gz=gz)
    ds, classes = build_dataset(args_for(tmp_path / "fm"))
    assert (len(ds), classes) == (64, 10) and len(build_test_split(args_for(tmp_path / "fm"))) == 32
    x, y = ds[13]
    assert x.shape == (3, 32, 32) and y == labels[13]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey copied into three channels
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()  # 2 px of zeros: black after normalisation
    assert torch.allclose(x[0, 2:30, 2:30], torch.from_numpy(images[13]).float() / 127.5 - 1)
    x64, _ = build_dataset(args_for(tmp_path / "fm", 64))[0][13]
    assert x64.shape == (3, 64, 64)  # other sizes: resized, not padded
    assert FashionMNIST.class_names[9] == "Ankle boot"


def test_missing_and_damaged_files_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_loader, "DEBIAN_FMNIST", tmp_path / "not_installed")
    a = DataSpec(dataset="fashion_mnist", image_path=str(tmp_path), data_dir=None, imsize=32, max_images=0, lsun_category="x",
                 full_decode=False)
    with pytest.raises(DatasetError) as e:
        build_dataset(a)
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and "bash download.sh fashion_mnist" in msg
    fake_fmnist(tmp_path / "fashion-mnist", gz=False)
    assert len(build_dataset(a)[0]) == 64  # found under <image_path>/fashion-mnist
    f = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="is truncated"):
        build_dataset(a)
    f.write_bytes(b"\x00\x00\x08\x01" + f.read_bytes()[4:])  # the labels' magic number on an image file
    with pytest.raises(DatasetError, match="is not the Fashion-MNIST file"):
        build_dataset(a)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        build_dataset(dataclasses.replace(a, data_dir=str(tmp_path / "afile")))


class RealImagesG(nn.Module):
    """A "generator" whose sample for label y is a real training image of class y: the classifier metric
    must then score about what the real images score."""

    def __init__(self, dataset: torch.utils.data.Dataset, num_classes: int) -> None:
        super().__init__()
        self.cfg = ModelConfig(imsize=32, num_classes=num_classes, z_dim=4)
        self.dummy = nn.Parameter(torch.zeros(()))
        images, labels = stack_uint8(dataset)
        self.by_class = [images[labels == c].float() / 127.5 - 1 for c in range(num_classes)]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pick = (z[:, 0].abs() * 1e4).long()
        return torch.stack([self.by_class[int(c)][int(k) % len(self.by_class[int(c)])] for c, k in zip(y, pick)])


class OneImagePerClassG(RealImagesG):
    """Collapse inside every class: each label's sample is always the same real image."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.by_class[int(c)][0] for c in y])


class NoiseG(RealImagesG):
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(z), 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_classifier_metric_on_real_images_and_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake_fmnist(tmp_path / "fm", n_train=2000, n_test=400)
    a = args_for(tmp_path / "fm")
    train, test = build_dataset(a)[0], build_test_split(a)
    ev = ClassifierEvaluator(train, test, "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path, n_ref=0)
    err = capsys.readouterr().err
    assert not ev.cache_hit and not ev.ind_cache_hit
    assert "training the tuning classifier (a small CNN) on 2,000 real fashion_mnist images" in err
    assert "training the independent classifier" in err and "independent classifier" in err
    assert ev.test_acc > 0.9 and ev.ind_test_acc > 0.9
    real = ev(RealImagesG(train, 10), 2000)["metrics"]
    assert real["cls_acc"] > 0.97 and real["ind_acc"] > 0.9  # through the generated-sample path
    assert real["gan_test"] == min(real["cls_acc"], real["ind_acc"])
    assert abs(real["gan_train_acc"] - ev.gan_train_real) < 0.1 and real["gan_train_acc"] > 0.8  # GAN-train: close to real
    # real training images as "samples" score what real data's own scale says (the same images, other labels order)
    scale = real["real"]
    assert scale["images"] == 2000 and abs(real["ind_fd"] - scale["ind_fd"]) < 0.5 * scale["ind_fd"] + 1
    assert real["ind_recall"] > 0.5 and real["ind_precision"] > 0.5
    assert real["cls_recall"] > 0.5 and real["cls_precision"] > 0.5 and scale["cls_recall"] > 0.5
    assert len(real["ind_fd_per_class"]) == len(real["ind_recall_per_class"]) == len(scale["ind_precision_per_class"]) == 10
    assert len(real["cls_recall_per_class"]) == len(scale["cls_precision_per_class"]) == 10
    # collapse inside each class: still in its class and on the real manifold, but recall in either space falls
    one = ev(OneImagePerClassG(train, 10), 500)["metrics"]
    assert one["cls_acc"] > 0.9 and one["cls_precision"] > 0.9
    # the weakest class (best_cls_min): the lowest per-class accuracy, over the classes that were drawn
    noise = ev(NoiseG(train, 10), 500)["metrics"]
    for m in (real, one, noise):
        assert m["cls_acc_min"] == min(m["cls_acc_per_class"]) and m["cls_acc_min"] <= m["cls_acc"]
    assert noise["cls_acc_min"] < 0.3 < 0.85 < one["cls_acc_min"]
    few = ev(RealImagesG(train, 10), 10)["metrics"]  # 10 uniform labels: some classes have no sample (nan)
    drawn = [a for a in few["cls_acc_per_class"] if a == a]
    assert len(drawn) < 10 and few["cls_acc_min"] == min(drawn)
    assert one["cls_recall"] < 0.1 and one["ind_recall"] < 0.1 and max(one["cls_recall_per_class"]) < 0.1
    assert noise["cls_acc"] < 0.5 and noise["ind_acc"] < 0.5 and noise["gan_train_acc"] < 0.5
    assert noise["fid_cls"] > 5 * real["fid_cls"] and noise["ind_fd"] > 5 * real["ind_fd"]
    assert noise["ind_precision"] < 0.1 and noise["ind_recall"] < 0.1 and noise["cls_precision"] < 0.1
    assert noise["real"]["images"] == 500  # the scale is computed at the samples' own count
    assert set(ev.scalars(real)) == {f"metrics/{k}2k" for k in ("gan_test", "cls_acc", "cls_acc_min", "ind_acc", "gan_train_acc",
                                                                  "fid_cls", "cls_precision", "cls_recall", "ind_fd",
                                                                  "ind_precision", "ind_recall")}
    table = ev.format(ev(RealImagesG(train, 10), 50))
    for text in ("gan_test50 (GAN-test: the lower of the two)", "ind_recall50", "cls_recall50 (tuning, k=3, vs test)",
                 "real training images", "Coat",
                 "not comparable with Inception FID", "independent classifier"):
        assert text in table
    # the cache: the same data loads both; other data (one image changed) trains both again
    again = ClassifierEvaluator(train, test, "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path, n_ref=0)
    assert again.cache_hit and again.ind_cache_hit
    train.images[0] = 255 - train.images[0]
    again = ClassifierEvaluator(train, test, "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path, n_ref=0)
    assert not again.cache_hit and not again.ind_cache_hit
    assert len(list((tmp_path / "classifier").glob("fashion_mnist-32px-independent-*.pt"))) == 2
    assert len(list((tmp_path / "classifier").glob("fashion_mnist-32px-*.pt"))) == 4


def test_precision_recall_and_frechet_on_known_sets() -> None:
    from classifier import frechet, precision_recall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    same = torch.randn(400, 4, generator=g)
    half = same[same[:, 0] > 0]  # one half of the distribution: precise, but covers half of it
    far = same + 20
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(real, half)
    assert p > 0.9 and 0.3 < r < 0.75
    assert precision_recall(real, far) == (0.0, 0.0)
    assert precision_recall(real, same[:3]) != precision_recall(real, same[:3])  # nan: too few points for k = 3
    assert frechet(real, same) < 0.2 and abs(frechet(real, far) - 4 * 400) < 60 and np.isnan(frechet(real, same[:1]))


def test_classifier_metric_refuses_what_it_cannot_score(tmp_path: Path) -> None:
    from metrics import EvalError

    train, test = Shapes(32, size=200), Shapes(32, size=40, seed=11)
    ev = ClassifierEvaluator(train, test, "shapes", 32, 4, torch.device("cpu"), tmp_path, n_ref=0)
    with pytest.raises(EvalError, match="class-conditional generators of 4 classes"):
        ev(_Unconditional(), 100)
    with pytest.raises(EvalError, match="needs the requested class"):
        ev.folder(tmp_path)


class _Unconditional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cfg = ModelConfig(imsize=32, num_classes=0)
        self.p = nn.Parameter(torch.zeros(()))


def test_fmnist_preset_resolves() -> None:
    a = get_parameters(["--preset", "fmnist_32"])
    assert (a.dataset, a.imsize, a.arch, a.eval_metric, a.version) == ("fashion_mnist", 32, "resnet", "classifier", "fmnist_32")


@pytest.mark.slow
def test_fmnist_preset_short_run_writes_classifier_metrics(workdir: Path, capsys: pytest.CaptureFixture,
                                                            no_torch_fidelity: None) -> None:
    """Also: the classifier metric needs no torch-fidelity."""
    from main import main

    fake_fmnist(workdir / "fm", n_train=120, n_test=40)
    flags = ["--preset", "fmnist_32", "--data_dir", str(workdir / "fm"), "--total_step", "2", "--eval_step", "2",
             "--eval_samples", "40", "--batch_size", "8", "--log_step", "1", "--sample_step", "2", "--model_save_step", "2",
             "--attn_samples", "0", "--device", "cpu", "--eval_cache_dir", str(workdir / "cache"), "--version", "fm"]
    assert main(flags) == 0
    rec = [json.loads(line) for line in (workdir / "models/fm/metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["step"] == 2 and {"cls_acc", "gan_train_acc", "fid_cls", "cls_acc_per_class", "gan_test", "ind_acc",
                                     "ind_fd_per_class", "ind_recall_per_class", "cls_recall_per_class", "real"} <= set(rec[-1])
    assert {p.name for p in (workdir / "models/fm").glob("best_*.pt")} \
        == {"best_cls_acc.pt", "best_fid_cls.pt", "best_cls_min.pt"}
    assert rec[-1]["truncation"] == 1.5  # the preset samples z truncated to [-1.5, 1.5], and names its metrics so
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(workdir / "logs/fm"))
    ea.Reload()
    assert {f"metrics/{k}40_trunc1.5" for k in ("cls_acc", "gan_train_acc", "fid_cls", "gan_test", "ind_fd", "ind_recall",
                                                "cls_recall")} \
        <= set(ea.Tags()["scalars"])
    evaluate = ["--train", "false", "--pretrained_model", "best_cls_acc", *flags[:2], "--data_dir", str(workdir / "fm"),
                "--version", "fm", "--eval_samples", "40", "--eval_cache_dir", str(workdir / "cache"), "--device", "cpu"]
    assert main(evaluate) == 0
    saved = json.loads((workdir / "models/fm/eval_best_cls_acc_40_trunc1.5.json").read_text())
    assert saved["metrics"]["truncation"] == 1.5
    out = capsys.readouterr().out
    assert "note: --preset fmnist_32 was tuned with the tuning classifier" in out
    for text in ("40 (uniform labels; z truncated to [-1.5, 1.5])", "gan_test40_trunc1.5 (GAN-test: the lower of the two)",
                 "ind_fd40_trunc1.5", "ind_recall40_trunc1.5", "real training images", "Ankle bo"):
        assert text in out
    with Image.open(workdir / "samples/fm/2_vs_real.png") as fig:  # 10 class lines of 64 px under a 24 px header
        assert fig.height == 24 + 10 * 64 and fig.width == 110 + 16 * 64 + 32
    # untruncated: another metric, with its own names and JSON file beside the truncated one
    assert main([*evaluate, "--truncation", "0"]) == 0
    out = capsys.readouterr().out
    assert "gan_test40 (GAN-test: the lower of the two)" in out and "z truncated" not in out
    saved = json.loads((workdir / "models/fm/eval_best_cls_acc_40.json").read_text())
    assert saved["metrics"]["truncation"] == 0.0 and (workdir / "models/fm/eval_best_cls_acc_40_trunc1.5.json").is_file()
    # standing statistics: another metric again, named and filed apart from the running averages' one
    assert main([*evaluate, "--standing_stats", "2"]) == 0
    out = capsys.readouterr().out
    assert "gan_test40_trunc1.5_ss2 (GAN-test" in out and "G's batch-norm statistics recomputed over 2 batches" in out
    saved = json.loads((workdir / "models/fm/eval_best_cls_acc_40_trunc1.5_ss2.json").read_text())
    plain = json.loads((workdir / "models/fm/eval_best_cls_acc_40_trunc1.5.json").read_text())
    assert saved["metrics"]["standing_stats"] == 2 and "standing_stats" not in plain["metrics"]


def test_best_cls_min_keeps_the_evaluation_whose_weakest_class_is_strongest(tmp_path: Path) -> None:
    """The classifier evaluator's best_* bookkeeping through metrics.MetricsLog, with scripted figures: best_cls_min
    is saved when the weakest class improves (not on a tie), and its value travels in `best`."""
    from metrics import MetricsLog

    class Scripted:
        best, scalars = ClassifierEvaluator.best, staticmethod(ClassifierEvaluator.scalars)

        def __init__(self, weakest: list[float]) -> None:
            self.weakest = iter(weakest)

        def __call__(self, G: nn.Module, n: int, source: str) -> dict:
            m = dict.fromkeys(ClassifierEvaluator.SCALARS, 0.5)
            return {"metrics": {**m, "samples": n, "cls_acc_min": next(self.weakest)}}

    log, ev, saved = MetricsLog(tmp_path / "metrics.jsonl"), Scripted([0.6, 0.8, 0.7, 0.8]), []
    for step in (1, 2, 3, 4):
        log.evaluate(ev, nn.Identity(), 2000, step, 0.0, 0.0, "G", None, lambda name, step=step: saved.append((name, step)))
    assert [step for name, step in saved if name == "best_cls_min"] == [1, 2] and log.best["cls_min"] == 0.8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["cls_acc_min"] for r in records] == [0.6, 0.8, 0.7, 0.8]


def test_the_classifier_metric_draws_nothing_from_the_global_rng(tmp_path: Path) -> None:
    fake_fmnist(tmp_path / "fm", n_train=120, n_test=40)
    a = args_for(tmp_path / "fm")
    ev = ClassifierEvaluator(build_dataset(a)[0], build_test_split(a), "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path,
                             n_ref=0, batch_size=10)
    G = RealImagesG(build_dataset(a)[0], 10)
    for _ in range(2):  # the first call also scores real images once (a DataLoader, whose iterator draws a seed)
        before = torch.get_rng_state()
        ev(G, 20)
        assert torch.equal(before, torch.get_rng_state())


class ZRecordingG(RealImagesG):
    """RealImagesG that keeps every z and label it was asked for."""

    def __init__(self, dataset: torch.utils.data.Dataset, num_classes: int) -> None:
        super().__init__(dataset, num_classes)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append((z.clone(), y.clone()))
        return super().forward(z, y)


def test_a_truncated_evaluation_draws_truncated_z_for_the_same_labels_and_says_so(tmp_path: Path) -> None:
    fake_fmnist(tmp_path / "fm", n_train=120, n_test=40)
    a = args_for(tmp_path / "fm")
    train, test = build_dataset(a)[0], build_test_split(a)
    results, seen = {}, {}
    for t in (0.0, 0.5):
        ev = ClassifierEvaluator(train, test, "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path, n_ref=0, batch_size=10,
                                 truncation=t)
        G = ZRecordingG(train, 10)
        results[t] = ev(G, 30)
        seen[t] = [torch.cat(v) for v in zip(*G.seen)]
    (z0, y0), (z1, y1) = seen[0.0], seen[0.5]
    assert torch.equal(y0, y1) and len(y1) == 30  # the same requested classes
    assert z0.abs().max() > 1 and z1.abs().max() <= 0.5  # truncated, and the untruncated draw is not
    assert torch.equal(z1, truncate_latents(z0, 0.5))  # the same draw, mapped
    m = results[0.5]["metrics"]
    assert m["truncation"] == 0.5 and results[0.0]["metrics"]["truncation"] == 0.0
    assert set(ev.scalars(m)) == {f"metrics/{k}30_trunc0.5" for k in ("gan_test", "cls_acc", "cls_acc_min", "ind_acc",
                                                                     "gan_train_acc", "fid_cls", "cls_precision", "cls_recall",
                                                                     "ind_fd", "ind_precision", "ind_recall")}
    table = ev.format(results[0.5])
    assert "30 (uniform labels; z truncated to [-0.5, 0.5])" in table and "cls_acc30_trunc0.5 (tuning classifier)" in table
    assert "z truncated" not in ev.format(results[0.0])


@pytest.mark.slow
def test_evaluating_sampling_and_saving_leave_the_training_trajectory_unchanged(workdir: Path) -> None:
    from main import main

    fake_fmnist(workdir / "fm", n_train=120, n_test=40)
    base = tiny_run_flags(workdir, "--g_conv_dim", "8", "--d_conv_dim", "8", "--attn_samples", "1")
    assert main([*base, "--version", "busy", "--eval_step", "2", "--sample_step", "1", "--model_save_step", "1"]) == 0
    assert main([*base, "--version", "quiet", "--eval_step", "0", "--sample_step", "100", "--model_save_step", "100"]) == 0
    busy, quiet = (torch.load(workdir / f"models/{v}/4.pt", map_location="cpu", weights_only=False) for v in ("busy", "quiet"))
    assert len(json.loads((workdir / "models/busy/metrics.jsonl").read_text().splitlines()[0])) > 0
    for part in ("G", "D", "G_ema"):
        for k, v in quiet[part].items():
            assert torch.equal(v, busy[part][k]), f"{part}.{k}"


def test_a_stop_abandons_a_classifier_evaluation_at_its_first_batch(tmp_path: Path) -> None:
    import time

    import progress

    fake_fmnist(tmp_path / "fm", n_train=600, n_test=100)
    a = args_for(tmp_path / "fm")
    train, test = build_dataset(a)[0], build_test_split(a)
    ev = ClassifierEvaluator(train, test, "fashion_mnist", 32, 10, torch.device("cpu"), tmp_path, n_ref=0, batch_size=10)
    calls = {"n": 0}

    def stop_after_two_checks() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    t0 = time.perf_counter()
    with pytest.raises(progress.Interrupted, match="sampling 5,000 images"), progress.abortable(stop_after_two_checks):
        ev(RealImagesG(train, 10), 5000)
    assert calls["n"] == 3 and time.perf_counter() - t0 < 5  # the third batch never ran, and no GAN-train classifier
