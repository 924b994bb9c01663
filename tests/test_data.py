"""Every loader reads a miniature of its real layout; missing data is one clear line."""

from pathlib import Path

import numpy as np
import pytest
import torch

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
