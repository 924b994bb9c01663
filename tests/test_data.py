"""Every loader reads a miniature of its real layout; missing data is one clear line."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakedata
from data_loader import SHAPE_CLASSES, DataSpec, DatasetError, Shapes, build_dataset, get_loader, render_shape


def _args(tmp_path: Path, dataset: str, imsize: int = 32, **kw) -> DataSpec:
    base = dict(dataset=dataset, image_path=str(tmp_path / "data"), data_dir=None, imsize=imsize,
                lsun_category="church_outdoor", max_images=0, full_decode=False)
    return DataSpec(**{**base, **kw})


def _check(ds, imsize: int) -> None:
    x, y = ds[0]
    assert x.shape == (3, imsize, imsize) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and isinstance(y, int)


@pytest.mark.parametrize("layout", ["old", "torchvision"])
def test_celeba_layouts(tmp_path: Path, layout: str) -> None:
    fakedata.celeba(tmp_path / "data", n=5, layout=layout)
    ds, nc = build_dataset(_args(tmp_path, "celeb", imsize=64))
    assert (len(ds), nc) == (5, 0)
    _check(ds, 64)


def test_lsun_lmdb(tmp_path: Path) -> None:
    fakedata.lsun(tmp_path / "data", "tower", n=6)
    ds, nc = build_dataset(_args(tmp_path, "lsun", lsun_category="tower"))
    assert (len(ds), nc) == (6, 0)
    for i in range(6):  # JPEG and WebP values, wide images centre-cropped to squares
        _check(ds, 32) if i == 0 else None
        assert ds[i][0].shape == (3, 32, 32)


def test_lsun_works_with_worker_processes(tmp_path: Path) -> None:
    fakedata.lsun(tmp_path / "data", n=8)
    ds, _ = build_dataset(_args(tmp_path, "lsun"))
    x, y = next(iter(get_loader(ds, torch.device("cpu"), batch_size=4, seed=0, num_workers=2)))
    assert x.shape == (4, 3, 32, 32)


def test_cifar10_pickles_with_labels(tmp_path: Path) -> None:
    fakedata.cifar10(tmp_path / "data", per_batch=3)
    ds, nc = build_dataset(_args(tmp_path, "cifar10"))
    assert (len(ds), nc) == (15, 10)
    _check(ds, 32)
    assert sorted({ds[i][1] for i in range(15)}) == sorted(set(int(v) for v in ds.labels))
    ds64, _ = build_dataset(_args(tmp_path, "cifar10", imsize=64))
    assert ds64[0][0].shape == (3, 64, 64)


def test_imagenet_image_folder(tmp_path: Path) -> None:
    fakedata.image_folder(tmp_path / "data" / "imagenet" / "train")
    ds, nc = build_dataset(_args(tmp_path, "imagenet"))
    assert (len(ds), nc) == (12, 3)
    assert [ds[i][1] for i in (0, 4, 8)] == [0, 1, 2]
    _check(ds, 32)


def test_folder_labelled_and_unlabelled(tmp_path: Path) -> None:
    labelled = fakedata.image_folder(tmp_path / "lab", classes=("cats", "dogs"), per_class=3)
    ds, nc = build_dataset(_args(tmp_path, "folder", data_dir=str(labelled)))
    assert (len(ds), nc) == (6, 2)
    flat = fakedata.celeba(tmp_path / "flat", n=4)
    ds, nc = build_dataset(_args(tmp_path, "folder", data_dir=str(flat)))
    assert (len(ds), nc) == (4, 0)


@pytest.mark.parametrize(
    "dataset,kw,needle",
    [
        ("celeb", {}, "bash download.sh CelebA"),
        ("lsun", {"lsun_category": "bedroom"}, "bash download.sh LSUN bedroom"),
        ("cifar10", {}, "bash download.sh cifar10"),
        ("imagenet", {}, "image-net.org"),
        ("folder", {}, "no images found under"),
    ],
)
def test_missing_dataset_is_one_line(tmp_path: Path, dataset: str, kw: dict, needle: str) -> None:
    with pytest.raises(DatasetError) as e:
        build_dataset(_args(tmp_path, dataset, **kw))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(tmp_path / "data") in msg


def test_empty_folder_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "data" / "CelebA").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images under"):
        build_dataset(_args(tmp_path, "celeb"))


def test_batch_larger_than_dataset(tmp_path: Path) -> None:
    fakedata.celeba(tmp_path / "data", n=3)
    ds, _ = build_dataset(_args(tmp_path, "celeb"))
    with pytest.raises(DatasetError, match="--batch_size 8 is larger than the dataset"):
        get_loader(ds, torch.device("cpu"), batch_size=8, seed=0, num_workers=0)


def test_shapes_deterministic_labelled_and_varied() -> None:
    a, b = Shapes(32, size=40), Shapes(32, size=40)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.labels.tolist() == [i % len(SHAPE_CLASSES) for i in range(40)]
    assert len({a.images[i].numpy().tobytes() for i in range(40)}) == 40
    img, label = render_shape(7, 32)
    assert np.array_equal(np.asarray(img), a.images[7].permute(1, 2, 0).numpy()) and label == 3


def test_max_images(tmp_path: Path) -> None:
    ds, nc = build_dataset(_args(tmp_path, "shapes", max_images=16))
    assert (len(ds), nc) == (16, 4)
    fakedata.celeba(tmp_path / "data", n=6)
    ds, _ = build_dataset(_args(tmp_path, "celeb", max_images=2))
    assert len(ds) == 2


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_that_would_run_code_is_refused_in_one_line(tmp_path: Path) -> None:
    import pickle

    folder = fakedata.cifar10(tmp_path / "data", per_batch=3)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:  # a planted batch: the real structure plus a code-running object
        pickle.dump({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2], "x": _Payload(marker)}, f)
    with pytest.raises(DatasetError) as e:
        build_dataset(_args(tmp_path, "cifar10"))
    msg = str(e.value)
    assert "data_batch_3 holds objects that a dataset file never holds (posix.system); nothing in it was run" in msg
    assert len(msg.splitlines()) == 1 and not marker.exists()
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="data_batch_3 is damaged or not a CIFAR-10 batch"):
        build_dataset(_args(tmp_path, "cifar10"))


def test_a_fifo_named_like_an_image_is_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    folder = tmp_path / "imgs"
    fakedata.image_folder(folder)
    os.mkfifo(folder / "n01440764" / "pipe.png")  # opening it would block until a writer comes
    ds, classes = build_dataset(_args(tmp_path, "folder", data_dir=str(folder)))
    assert classes == 3 and len(ds) == 12 and all(not str(f).endswith("pipe.png") for f in ds.files)
    assert "skipped 1 image name(s)" in capsys.readouterr().err
    _check(ds, 32)


# ----------------------------------------------------------------------------------------------
# Reduced-size JPEG decoding, the automatic worker count, and the decoded-image cache


def _photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    """A smooth, photo-like JPEG (gradients and soft blobs), large enough to be decoded at reduced size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = 60 + 120 * np.stack([xx, yy, 1 - xx], -1)
    for _ in range(4):
        cy, cx, r = rng.random(), rng.random(), 0.1 + 0.2 * rng.random()
        img += 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None] * (rng.random(3) - 0.5)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_large_jpegs_are_decoded_at_reduced_size_and_look_the_same(tmp_path: Path) -> None:
    from data_loader import open_rgb, square_transform

    big = _photo(tmp_path / "big.jpg", 500, 375)
    assert open_rgb(big).size == (500, 375)
    assert open_rgb(big, 128).size == (250, 188)  # 1/2 scale: the short side stays at least 128
    assert open_rgb(big, 64).size == (250, 188) or min(open_rgb(big, 64).size) >= 64
    assert min(open_rgb(big, 32).size) < 188 and min(open_rgb(big, 32).size) >= 32  # 1/4 or 1/8 scale
    assert open_rgb(big, 200).size == (500, 375)  # short side below twice the target: decoded in full
    Image.open(big).save(tmp_path / "big.png")
    assert open_rgb(tmp_path / "big.png", 32).size == (500, 375)  # only JPEGs have DCT scaling
    tf = square_transform(128)
    full, fast = tf(open_rgb(big)), tf(open_rgb(big, 128))
    mse = ((full - fast) * 127.5).pow(2).mean().item()
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 30  # another decode, the same picture (PSNR > 30 dB)


def test_full_decode_flag_turns_reduced_decoding_off(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / "c"
    folder.mkdir(parents=True)
    _photo(folder / "a.jpg", 400, 300)
    ds, _ = build_dataset(_args(tmp_path, "folder", data_dir=str(tmp_path / "photos"), imsize=64))
    full, _ = build_dataset(_args(tmp_path, "folder", data_dir=str(tmp_path / "photos"), imsize=64, full_decode=True))
    assert (ds.draft, full.draft) == (64, None)
    assert not torch.equal(ds[0][0], full[0][0]) and (ds[0][0] - full[0][0]).abs().mean() < 0.02


def test_automatic_worker_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import data_loader

    fakedata.image_folder(tmp_path / "data" / "imagenet" / "train")
    files, _ = build_dataset(_args(tmp_path, "imagenet"))
    shapes, _ = build_dataset(_args(tmp_path, "shapes"))
    monkeypatch.setattr(data_loader.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data_loader.workers_for(None, files) == 12 and data_loader.workers_for(3, files) == 3
    assert data_loader.workers_for(None, shapes) == 0  # in memory: workers would only copy
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun processes share the node's CPUs
    assert data_loader.workers_for(None, files) == 3
    monkeypatch.setattr(data_loader.os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    assert data_loader.workers_for(None, files) == data_loader.MAX_AUTO_WORKERS
    loader = get_loader(files, torch.device("cpu"), batch_size=4, seed=0, num_workers=2)
    assert loader.persistent_workers and loader.prefetch_factor == data_loader.PREFETCH_FACTOR


def _cache_args(tmp_path: Path, **kw) -> DataSpec:
    return _args(tmp_path, "imagenet", data_cache=str(tmp_path / "cache"), **kw)


def test_data_cache_holds_exactly_what_the_decoder_gives_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import data_loader

    fakedata.image_folder(tmp_path / "data" / "imagenet" / "train")
    plain, classes = build_dataset(_args(tmp_path, "imagenet"))
    cached, cached_classes = build_dataset(_cache_args(tmp_path))
    assert type(cached).__name__ == "CachedImages" and (len(cached), cached_classes) == (12, classes)
    expected = [plain[i] for i in range(12)]
    for (x, y), i in zip(expected, range(12)):
        cx, cy = cached[i]
        assert torch.equal(x, cx) and y == cy and cx.dtype == torch.float32
    err = capsys.readouterr().err
    assert "data cache: decoding 12 images once into" in err
    npy = list((tmp_path / "cache").glob("imagenet-32px-reduced-*.npy"))
    assert len(npy) == 1 and np.load(npy[0]).shape == (12, 3, 32, 32)
    assert cached.source_files() == plain.source_files()  # the reference statistics' fingerprint is unchanged

    def no_decoding(*a: object, **k: object) -> None:
        raise AssertionError("decoded an image although the cache holds it")

    monkeypatch.setattr(data_loader, "open_rgb", no_decoding)
    again, _ = build_dataset(_cache_args(tmp_path))
    assert "data cache: reading 12 decoded images from" in capsys.readouterr().err
    loader = get_loader(again, torch.device("cpu"), batch_size=4, seed=0, num_workers=2)  # workers map the file themselves
    order = next(iter(loader.batch_sampler))
    x, y = next(iter(loader))
    assert all(torch.equal(x[k], expected[i][0]) and int(y[k]) == expected[i][1] for k, i in enumerate(order))


@pytest.mark.parametrize("dataset", ["celeb", "lsun"])
def test_data_cache_holds_every_file_dataset_to_the_bit(tmp_path: Path, dataset: str) -> None:
    fakedata.celeba(tmp_path / "data", n=5) if dataset == "celeb" else fakedata.lsun(tmp_path / "data", n=6)
    plain, _ = build_dataset(_args(tmp_path, dataset))
    cached, _ = build_dataset(_args(tmp_path, dataset, data_cache=str(tmp_path / "cache")))
    assert len(cached) == len(plain) and all(torch.equal(plain[i][0], cached[i][0]) for i in range(len(plain)))
    decode = "full" if dataset == "celeb" else "reduced"  # CelebA's 160 px crop is in full-size pixels
    assert len(list((tmp_path / "cache").glob(f"{dataset}-32px-{decode}-*.npy"))) == 1


def test_data_cache_is_rebuilt_when_the_images_or_settings_change(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    root = fakedata.image_folder(tmp_path / "data" / "imagenet" / "train")
    build_dataset(_cache_args(tmp_path))
    victim = sorted(root.rglob("*.JPEG"))[5]
    Image.fromarray(np.full((60, 90, 3), 200, np.uint8)).save(victim, format="JPEG")
    os.utime(victim, ns=(1, 1))
    capsys.readouterr()
    cached, _ = build_dataset(_cache_args(tmp_path))
    assert "decoding 12 images" in capsys.readouterr().err
    plain, _ = build_dataset(_args(tmp_path, "imagenet"))
    assert torch.equal(cached[5][0], plain[5][0])
    build_dataset(_cache_args(tmp_path, max_images=5, full_decode=True))
    build_dataset(_cache_args(tmp_path, imsize=64))
    names = sorted(p.name.split("-")[1] + "-" + p.name.split("-")[2] for p in (tmp_path / "cache").glob("*.npy"))
    assert names == ["32px-full", "32px-reduced", "32px-reduced", "64px-reduced"]
    # a cache file cut short (a copy interrupted, a disk error) is found out and rebuilt
    npy = next(p for p in (tmp_path / "cache").glob("imagenet-64px-*.npy"))
    npy.write_bytes(npy.read_bytes()[:1000])
    capsys.readouterr()
    cached, _ = build_dataset(_cache_args(tmp_path, imsize=64))
    assert "decoding 12 images" in capsys.readouterr().err and np.load(npy).shape == (12, 3, 64, 64)


def test_data_cache_keeps_the_unreadable_files_count(tmp_path: Path) -> None:
    from data_loader import bad_files

    folder = fakedata.image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=60)
    (folder / "b" / "zz_broken.jpg").write_bytes(b"not a jpeg")
    plain, _ = build_dataset(_args(tmp_path, "folder", data_dir=str(folder)))
    cached, _ = build_dataset(_args(tmp_path, "folder", data_dir=str(folder), data_cache=str(tmp_path / "cache")))
    n_bad, n, names = bad_files(cached)
    assert (n_bad, n) == (1, 121) and names[0].endswith("zz_broken.jpg")
    assert all(torch.equal(plain[i][0], cached[i][0]) and plain[i][1] == cached[i][1] for i in (118, 119, 120))


def test_data_cache_refusals_are_one_line_and_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import progress

    fakedata.cifar10(tmp_path / "data", per_batch=3)
    with pytest.raises(DatasetError, match="cifar10 decodes none: drop --data_cache") as e:
        build_dataset(_args(tmp_path, "cifar10", data_cache=str(tmp_path / "cache")))
    assert len(str(e.value).splitlines()) == 1
    fakedata.image_folder(tmp_path / "data" / "imagenet" / "train")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=20_000))
    with pytest.raises(DatasetError, match=r"the decoded images need .* and the disk has .* free; point --data_cache at a larger disk"):
        build_dataset(_cache_args(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", real)
    with progress.abortable(lambda: True), pytest.raises(progress.Interrupted):  # a stop signal while it is built
        build_dataset(_cache_args(tmp_path))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]  # no .npy, .json or temporary file


def test_training_from_the_cache_prints_the_workers_and_trains_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from main import main

    monkeypatch.chdir(tmp_path)
    folder = fakedata.image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8)
    flags = ["--dataset", "folder", "--data_dir", str(folder), "--imsize", "32", "--g_conv_dim", "8", "--d_conv_dim", "8",
             "--z_dim", "16", "--batch_size", "4", "--total_step", "2", "--log_step", "1", "--sample_step", "100",
             "--attn_samples", "0", "--use_tensorboard", "false", "--device", "cpu"]
    assert main(flags + ["--version", "plain", "--num_workers", "0"]) == 0
    assert main(flags + ["--version", "cached", "--data_cache", str(tmp_path / "cache")]) == 0
    from data_loader import MAX_AUTO_WORKERS, usable_cpus

    out, err = capsys.readouterr()
    assert "data cache: decoding 16 images once" in err
    assert f"workers {min(usable_cpus(), MAX_AUTO_WORKERS)} (auto) per process" in out  # this machine's CPUs, at most 16
    a, b = (torch.load(tmp_path / "models" / v / "2.pt", weights_only=False)["G"] for v in ("plain", "cached"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same images in the same order: the same model
