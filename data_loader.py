"""Datasets and the training data loader.

Every dataset yields (image, label): a float tensor (3, imsize, imsize) in [-1, 1], and an integer
label (0 for unlabelled data). `build_dataset` returns the dataset and its number of classes (0 when
unlabelled). Random flips are applied per batch by the trainer (`--flip`), not here.

The datasets are the entries of `DATASETS`, the one registry (name -> builder, number of classes,
held-out split for the classifier metric, `download.sh` name, what the images are); parameter.py,
main.py, bench.py and the error messages read it. Where each is read from and how it is preprocessed:
docs/training.md, "Datasets".

A missing or empty dataset raises `DatasetError` with one line: what was looked for, where, and the
`download.sh` command that fetches it.

Decoding (`open_rgb`): grayscale, 16-bit, palette, CMYK and transparent images become 8-bit RGB
(16-bit values are scaled by 255/65535, transparency is composited onto white). A file that cannot be
decoded (corrupt, truncated, not an image) is skipped: the item is replaced by the next readable one
and marked in a shared-memory bitmap (`bad_files`), so that the trainer can warn with a count and
stop when more than `MAX_BAD_FRACTION` of the dataset is unreadable.

Reduced-size decoding: ImageNet, `folder` and LSUN crop and resize by proportion, so a JPEG whose short
side is at least twice the target is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (PIL's `draft`,
never below the target) and then resized exactly as before: 0.64 of the previous path's CPU time per
image at 128 px, a median PSNR of 35.1 dB against the full decode (lowest 24.1 dB) on synthetic
ImageNet-sized JPEGs (BENCHMARKS.md, "Loader"); `--full_decode` keeps the full decode. CelebA's fixed
160 px crop is in pixels of the full image, so CelebA is always decoded in full. Every file dataset's
transform ends in `to_signed_tensor` (x / 127.5 - 1), which `metrics.to_uint8` inverts exactly.

The decoded-image cache (`--data_cache FOLDER`, `cached_dataset`): a file dataset decoded once into a
uint8 .npy of shape (N, 3, imsize, imsize), written durably and under a lock, named by a key over the
source files' names, sizes and modification times, the size and the decode; later runs read it through
a memory map (0.02 of the previous path's CPU time per image at 128 px). Items are bit-identical to the
decoder's, unreadable files included (their flags and names are kept in the cache's .json). This is
BigGAN-PyTorch's HDF5 idea (`make_hdf5.py`), with no random crop to lose: these transforms are
deterministic and flips happen per batch in the trainer.

Loader workers (`--num_workers`, default auto): 0 for the in-memory datasets (`shapes`, CIFAR-10,
Fashion-MNIST), else the CPUs this process may use (`os.sched_getaffinity`) divided by the processes
of the node (torchrun's LOCAL_WORLD_SIZE), at most 16. Workers persist across epochs and prefetch 4
batches each.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017) is held in memory as uint8. Its 28x28 images sit on a
black background, so at 32 px they are padded with 2 px of zeros (black, -1 after normalisation)
rather than resized; at other sizes they are resized (bilinear, antialiased) and rounded back to
uint8. The grey channel is copied into the model's three. The header of every idx file is checked
(magic number, counts 60,000/10,000, 28x28), which also covers Debian's recompressed files whose
MD5s differ from upstream's. The train split trains the model and gives the reference statistics;
the test split (`build_test_split`) is held out for the classifier metric (`classifier.py`).

Training order (`EpochBatchSampler`): one permutation per epoch from (seed, epoch), split across
processes as DistributedSampler does, and started at any batch of the epoch, so that a resumed run
reads exactly the batches that an uninterrupted run would have read.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms as T

from durable import why_not_written, write_durably, write_json
from metrics import hash_file_stats, to_uint8
from progress import Progress

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MAX_BAD_FRACTION = 0.01  # training stops when more than 1% of the images cannot be decoded
MIN_SIDE = 8  # an image folder whose sampled images are all smaller than this is refused


class DatasetError(Exception):
    """A dataset that cannot be used; the message is one line that says what to do."""


def open_rgb(src: "Path | io.BytesIO", draft: int | None = None) -> Image.Image:
    """Decode an image and return it as 8-bit RGB (see the module docstring for the conversions). With
    `draft`, a JPEG whose short side is at least twice `draft` is decoded at a reduced size (libjpeg's
    DCT scaling by 1/2, 1/4 or 1/8, PIL's `draft`) whose short side is still at least `draft`."""
    with Image.open(src) as img:
        if draft and img.format == "JPEG" and min(img.size) >= 2 * draft:
            w, h = img.size
            short = min(w, h)
            img.draft(img.mode, (-(-w * draft // short), -(-h * draft // short)))
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            a = np.asarray(img, dtype=np.float64)
            a = a * (255.0 / 65535.0) if mode != "I" or a.max() > 255 else a
            return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
        if mode == "F":
            a = np.asarray(img, dtype=np.float64)
            a = a * 255.0 if a.max() <= 1.0 else a
            return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
        if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img if img.mode == "RGB" else img.convert("RGB")


class ReadableItems(Dataset):
    """Base of the datasets that decode files: an unreadable item is replaced by the next readable
    one and recorded in `self.bad`, a bool tensor in shared memory (visible across loader workers)."""

    def __init__(self, n: int) -> None:
        self.bad = torch.zeros(n, dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.bad)

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            if self.bad[j]:
                continue
            try:
                return self.read(j)
            except Exception:  # noqa: BLE001 - any decoding failure: skip the file, count it
                self.bad[j] = True
        raise DatasetError(f"none of the {n} images could be decoded (e.g. {self.name(i)}); check the dataset folder")


def unwrap(dataset: Dataset) -> tuple[Dataset, torch.Tensor | None]:
    """(the dataset under any Subsets, the indices into it of the items of `dataset`; None without Subsets)."""
    indices = None
    while isinstance(dataset, Subset):
        indices = torch.as_tensor(dataset.indices) if indices is None else torch.as_tensor(dataset.indices)[indices]
        dataset = dataset.dataset
    return dataset, indices


def bad_files(dataset: Dataset) -> tuple[int, int, list[str]]:
    """(unreadable items found so far, items, a few of their names) of a dataset or a Subset of one."""
    base, indices = unwrap(dataset)
    if not isinstance(base, ReadableItems) or not base.bad.any():  # the common case, cheap at every log step
        return 0, len(dataset), []
    flags = base.bad if indices is None else base.bad[indices]
    where = torch.nonzero(flags).flatten()
    picked = where if indices is None else indices[where]
    return int(flags.sum()), len(flags), [base.name(int(j)) for j in picked[:3]]


def check_bad_files(dataset: Dataset) -> str | None:
    """None when every image read so far decoded; a warning line when some did not; DatasetError
    when more than MAX_BAD_FRACTION of the dataset is unreadable."""
    n_bad, n, names = bad_files(dataset)
    if not n_bad:
        return None
    line = f"{n_bad} of {n} images could not be decoded and were skipped (e.g. {', '.join(names)})"
    if n_bad > MAX_BAD_FRACTION * n:
        raise DatasetError(f"{line}: more than {MAX_BAD_FRACTION:.0%} of the dataset; re-download it or remove the broken files")
    return line


class CenterCropLongEdge:
    """Crop the central square whose side is the short edge (BigGAN-PyTorch / MMGeneration)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return T.functional.center_crop(img, min(img.size))


def uint8_to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]: x / 127.5 - 1 (`metrics.to_uint8` inverts it exactly)."""
    return x.float().div_(127.5).sub_(1.0)


def to_signed_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) float in [-1, 1] (x / 127.5 - 1, ToTensor + Normalize(0.5, 0.5) in one pass)."""
    return uint8_to_signed(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)).contiguous()


class SquareResize:
    """The centre square of the short side (torchvision's centre-crop rounding), resized to imsize x imsize
    (PIL bilinear, antialiased when shrinking), as a [-1, 1] tensor: the same values as CenterCropLongEdge,
    T.Resize, ToTensor and Normalize(0.5, 0.5), in fewer passes."""

    def __init__(self, imsize: int) -> None:
        self.imsize = imsize

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        s = min(w, h)
        left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
        if s != self.imsize or w != h:
            img = img.crop((left, top, left + s, top + s)).resize((self.imsize, self.imsize), Image.BILINEAR)
        return to_signed_tensor(img)


def square_transform(imsize: int) -> SquareResize:
    return SquareResize(imsize)


# ----------------------------------------------------------------------------------------------
# shapes: the built-in dataset


SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
SHAPES_SIZE = 10_000
SHAPES_SEED = 2019


def render_shape(index: int, imsize: int, seed: int = SHAPES_SEED) -> tuple[Image.Image, int]:
    """Image `index` of the shapes dataset: one upright shape of class index % 4 with random colour,
    size and position on a plain dark background. The RNG is seeded by (seed, index) only."""
    rng = np.random.default_rng([seed, index])
    label = index % len(SHAPE_CLASSES)
    s = 4 * imsize  # supersampled canvas
    bg = tuple(int(c) for c in rng.integers(0, 90, 3))
    fg = tuple(int(c) for c in rng.integers(120, 256, 3))
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * s  # half the shape's extent
    cx, cy = rng.uniform(r + 0.03 * s, s - r - 0.03 * s, 2)

    def poly(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(cx + r * x, cy + r * y) for x, y in points]

    name = SHAPE_CLASSES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "square":
        draw.polygon(poly([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]), fill=fg)
    elif name == "triangle":
        draw.polygon(poly([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]), fill=fg)
    else:
        w = 0.33
        draw.polygon(poly([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]), fill=fg)
    return img.resize((imsize, imsize), Image.LANCZOS), label


class Shapes(Dataset):
    """Procedurally generated, labelled shapes, rendered once into memory (uint8)."""

    num_classes = len(SHAPE_CLASSES)
    in_memory = True

    def __init__(self, imsize: int, size: int = SHAPES_SIZE, seed: int = SHAPES_SEED) -> None:
        imgs, labels = [], []
        for i in range(size):
            img, label = render_shape(i, imsize, seed)
            imgs.append(np.asarray(img))
            labels.append(label)
        self.images = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return uint8_to_signed(self.images[i]), int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# Image folders (CelebA, ImageNet, any folder)


def list_images(root: Path) -> list[Path]:
    """Image files (by extension) under `root`, sorted; a scan longer than a few seconds reports progress."""
    files, skipped = [], []
    with Progress(f"scanning {root}", None, "images") as p:
        for d, dirs, names in os.walk(root):
            dirs.sort()
            found = [Path(d) / n for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
            regular = [f for f in found if f.is_file()]  # a FIFO or device named *.png would block its reader
            skipped += [f for f in found if not f.is_file() and f.exists()]
            files += regular
            p.update(len(regular))
    if skipped:
        print(f"warning: skipped {len(skipped)} image name(s) under {root} that are not regular files (a FIFO, socket or "
              f"device), e.g. {skipped[0]}", file=sys.stderr, flush=True)
    return files


def no_images_hint(root: Path) -> str:
    """What else is under `root` when it holds no image with a supported extension ('' when nothing is)."""
    if not root.is_dir():
        return ""
    others = sorted({p.suffix.lower() or p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")})
    if not others:
        return ""
    return (f" (it holds only {', '.join(others[:5])}{', ...' if len(others) > 5 else ''} files; supported: "
            f"{', '.join(IMG_EXTENSIONS)}: convert them, e.g. to PNG)")


def check_image_files(files: list[Path], where: Path, samples: int = 32) -> list[Path]:
    """`files`, after reading the headers of up to `samples` of them spread over the list: an error
    when none is an image at least MIN_SIDE pixels on its short side (all too small, or none readable)."""
    pick = [files[int(i)] for i in np.unique(np.linspace(0, len(files) - 1, min(samples, len(files))).round())]
    sizes = []
    for f in pick:
        try:
            with Image.open(f) as img:
                sizes.append(img.size)
        except Exception:  # noqa: BLE001 - a file whose header cannot be read is not counted
            continue
    if any(min(wh) >= MIN_SIDE for wh in sizes):
        return files
    if not sizes:
        raise DatasetError(f"none of {len(pick)} sampled files under {where} is a readable image (e.g. {pick[0]}); "
                           f"re-download the dataset or point --data_dir at a folder of images")
    w, h = sizes[0]
    raise DatasetError(f"the images under {where} are too small to train on (sampled {len(pick)} of {len(files):,}: "
                       f"all smaller than {MIN_SIDE}x{MIN_SIDE}, e.g. {w}x{h} in {pick[0]}); point --data_dir at the real images")


class ImageFiles(ReadableItems):
    """Image files with optional integer labels, decoded with `open_rgb` (at reduced size for large JPEGs
    when `draft` is the target short side; only for transforms that crop and resize by proportion)."""

    def __init__(self, files: list[Path], labels: list[int] | None, transform: Callable, draft: int | None = None) -> None:
        super().__init__(len(files))
        self.files, self.labels, self.transform, self.draft = files, labels, transform, draft
        self.num_classes = max(labels) + 1 if labels else 0  # class_folders' labels are 0..K-1

    def source_files(self) -> list[Path]:
        return list(self.files)

    def name(self, i: int) -> str:
        return str(self.files[i])

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_rgb(self.files[i], self.draft)), self.labels[i] if self.labels is not None else 0


def class_folders(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """ImageFolder layout: one sub-folder per class (sorted), images anywhere below it."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    files, labels, used = [], [], []
    for c in classes:
        imgs = list_images(root / c)
        if imgs:
            labels += [len(used)] * len(imgs)
            files += imgs
            used.append(c)
    return files, labels, used


# ----------------------------------------------------------------------------------------------
# LSUN (lmdb) and CIFAR-10 (pickles)


class LSUN(ReadableItems):
    """One LSUN category's lmdb export; values are encoded images. The lmdb handle opens lazily per worker."""

    def __init__(self, db_path: Path, transform: Callable, draft: int | None = None) -> None:
        import lmdb

        self.db_path, self.transform, self.env, self.draft = str(db_path), transform, None, draft
        with lmdb.open(self.db_path, readonly=True, lock=False, readahead=False, meminit=False) as env:
            with env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
        super().__init__(len(self.keys))

    def name(self, i: int) -> str:
        return f"{self.db_path} key {self.keys[i].decode(errors='replace')}"

    def source_files(self) -> list[Path]:
        return [Path(self.db_path) / "data.mdb"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "env": None}

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        if self.env is None:
            import lmdb

            self.env = lmdb.open(self.db_path, readonly=True, lock=False, readahead=False, meminit=False)
        with self.env.begin() as txn:
            buf = txn.get(self.keys[i])
        return self.transform(open_rgb(io.BytesIO(buf), self.draft)), 0


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside RestrictedUnpickler.ALLOWED."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's python batches hold: dicts, lists, str, bytes, int and numpy arrays.
    Any other global (a class or function, the way a pickle runs code) is refused before it is looked up."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def load_data_pickle(path: Path) -> dict:
    """A dataset's pickle file (CIFAR-10's batches) through `RestrictedUnpickler`; anything else is one line."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise DatasetError(f"{path} holds objects that a dataset file never holds ({e}); nothing in it was run. Delete it and "
                           f"fetch the data again (bash download.sh cifar10)") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle
        raise DatasetError(f"{path} is damaged or not a CIFAR-10 batch ({type(e).__name__}); delete it and fetch the data "
                           f"again (bash download.sh cifar10)") from None
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        raise DatasetError(f"{path} is not a CIFAR-10 batch (no data and labels); delete it and fetch the data again "
                           f"(bash download.sh cifar10)")
    return obj


class CIFAR10(Dataset):
    """CIFAR-10 training set from the python pickles (`data_batch_1` .. `data_batch_5`)."""

    num_classes = 10
    in_memory = True  # loader workers would only add inter-process copies

    def __init__(self, folder: Path, imsize: int) -> None:
        data, labels = [], []
        for k in range(1, 6):
            batch = load_data_pickle(folder / f"data_batch_{k}")
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch["labels"])
        self.images = torch.from_numpy(np.concatenate(data))  # (50000, 3, 32, 32) uint8
        self.files = [folder / f"data_batch_{k}" for k in range(1, 6)]
        self.labels = torch.tensor(labels)
        self.imsize = imsize

    def __len__(self) -> int:
        return len(self.labels)

    def source_files(self) -> list[Path]:
        return list(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = uint8_to_signed(self.images[i])
        if self.imsize != 32:
            x = torch.nn.functional.interpolate(x[None], size=self.imsize, mode="bilinear", antialias=True, align_corners=False)[0]
        return x, int(self.labels[i])


FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000)}
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_HOW = "install it with: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or fetch it with: bash download.sh fashion_mnist"


def idx_file(folder: Path, base: str) -> Path | None:
    """`base` or `base.gz` in `folder`, whichever exists (the raw file first)."""
    for p in (folder / base, folder / f"{base}.gz"):
        if p.is_file():
            return p
    return None


def read_idx(path: Path, images: bool, count: int | None = None) -> np.ndarray:
    """An idx file (gzipped or not) with its header checked: magic number, 28x28 images, and `count`
    items when given: images (N, 28, 28) or labels (N,), uint8."""
    magic = 2051 if images else 2049
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} cannot be read ({e}); delete it and {FMNIST_HOW}") from e
    header = 16 if images else 8
    got = np.frombuffer(data[:header], dtype=">i4").tolist() if len(data) >= header else []
    n = got[1] if len(got) > 1 else -1
    dims = (n, 28, 28) if images else (n,)
    if got != [magic, *dims] or (count is not None and n != count):
        want = [magic, count if count is not None else "N"] + ([28, 28] if images else [])
        raise DatasetError(f"{path} is not the Fashion-MNIST file it should be (header {got or 'missing'}, expected "
                           f"{want}); delete it and {FMNIST_HOW}")
    if len(data) != header + int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated ({len(data) - header} of {int(np.prod(dims))} bytes of data); "
                           f"delete it and {FMNIST_HOW}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def fmnist_folder(spec: "DataSpec") -> Path:
    """The first of --data_dir, <image_path>/fashion-mnist/, /usr/share/datasets/fashion-mnist/ holding all four files."""
    candidates = [Path(spec.data_dir)] if spec.data_dir else [Path(spec.image_path) / "fashion-mnist", DEBIAN_FMNIST]
    bases = [b for img, lab, _ in FMNIST_FILES.values() for b in (img, lab)]
    for c in candidates:
        if c.is_file():
            raise DatasetError(f"--data_dir {c} is a file; pass the folder that holds the four Fashion-MNIST idx files")
        if all(idx_file(c, b) for b in bases):
            return c
    raise DatasetError(f"Fashion-MNIST not found: the four idx files (train-images-idx3-ubyte[.gz], ...) are not in "
                       f"{' or '.join(str(c) for c in candidates)}; {FMNIST_HOW}")


class FashionMNIST(Dataset):
    """One Fashion-MNIST split in memory: uint8 (N, 1, imsize, imsize), labels 0-9 (`FMNIST_CLASSES`)."""

    num_classes = 10
    class_names = FMNIST_CLASSES
    in_memory = True

    def __init__(self, folder: Path, imsize: int, split: str = "train") -> None:
        img_base, lab_base, _ = FMNIST_FILES[split]  # the full counts are download.sh's check; tests use small files
        self.files = [idx_file(folder, img_base), idx_file(folder, lab_base)]
        images = torch.from_numpy(read_idx(self.files[0], images=True).copy())[:, None]  # (N, 1, 28, 28)
        self.labels = torch.from_numpy(read_idx(self.files[1], images=False).astype(np.int64))
        if len(self.labels) != len(images):
            raise DatasetError(f"{self.files[0]} holds {len(images)} images but {self.files[1]} {len(self.labels)} labels; "
                               f"delete them and {FMNIST_HOW}")
        if int(self.labels.max()) >= self.num_classes:
            raise DatasetError(f"{self.files[1]} holds labels up to {int(self.labels.max())}, not 0-9; delete it and {FMNIST_HOW}")
        if imsize == 32:
            images = torch.nn.functional.pad(images, (2, 2, 2, 2))  # zeros: the images' own black background
        elif imsize != 28:
            x = torch.nn.functional.interpolate(images.float(), size=imsize, mode="bilinear", antialias=True, align_corners=False)
            images = x.round().clamp(0, 255).to(torch.uint8)
        self.images = images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def source_files(self) -> list[Path]:
        return list(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return uint8_to_signed(self.images[i]).expand(3, -1, -1), int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# The registry: every dataset by name


@dataclass(frozen=True)
class DataSpec:
    """Which images to load and where (main.py builds it from the flags of the same names)."""

    dataset: str
    imsize: int
    image_path: str
    data_dir: str | None
    lsun_category: str
    max_images: int
    full_decode: bool
    data_cache: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.image_path)

    @property
    def folder(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else None

    @property
    def draft(self) -> int | None:
        """The size for reduced-size JPEG decoding (scale-free transforms only), None with --full_decode."""
        return None if self.full_decode else self.imsize


def _shapes(spec: DataSpec) -> Dataset:
    n = spec.max_images
    return Shapes(spec.imsize, size=min(n, SHAPES_SIZE) if n else SHAPES_SIZE)


def _celeb(spec: DataSpec) -> Dataset:
    candidates = [spec.folder] if spec.folder else [spec.root / "CelebA", spec.root / "celeba" / "img_align_celeba"]
    for c in candidates:
        files = list_images(c) if c.is_dir() else []
        if files:
            return ImageFiles(check_image_files(files, c), None, T.Compose([T.CenterCrop(160), T.Resize(spec.imsize), to_signed_tensor]))
    hint = "".join(no_images_hint(c) for c in candidates)
    raise DatasetError(f"CelebA not found: no images under {' and '.join(str(c) for c in candidates)}{hint}; fetch it with: "
                       f"bash download.sh {DATASETS['celeb'].download}")


def _lsun(spec: DataSpec) -> Dataset:
    cat = spec.lsun_category
    db = spec.folder or spec.root / f"{cat}_train_lmdb"
    if not (db / "data.mdb").is_file():
        raise DatasetError(f"LSUN {cat} not found: no lmdb database at {db}/data.mdb; fetch it with: "
                           f"bash download.sh {DATASETS['lsun'].download} {cat}")
    ds = LSUN(db, T.Compose([T.Resize(spec.imsize), T.CenterCrop(spec.imsize), to_signed_tensor]), spec.draft)
    if len(ds) == 0:
        raise DatasetError(f"LSUN {cat} at {db} is empty; fetch it again with: bash download.sh {DATASETS['lsun'].download} {cat}")
    return ds


def _cifar10(spec: DataSpec) -> Dataset:
    folder = spec.folder or spec.root / "cifar-10-batches-py"
    missing = [f"data_batch_{k}" for k in range(1, 6) if not (folder / f"data_batch_{k}").is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 not found: missing {', '.join(missing)} in {folder}; fetch it with: bash download.sh {DATASETS['cifar10'].download}")
    return CIFAR10(folder, spec.imsize)


def _imagenet(spec: DataSpec) -> Dataset:
    folder = spec.folder or spec.root / "imagenet" / "train"
    files, labels, classes = class_folders(folder)
    if not files:
        raise DatasetError(
            f"ImageNet not found: no class folders of images under {folder}{no_images_hint(folder)}; download the ILSVRC2012 "
            f"train set from https://image-net.org (login required, no download.sh entry) and unpack one folder per class there"
        )
    return ImageFiles(check_image_files(files, folder), labels, square_transform(spec.imsize), spec.draft)


def _folder(spec: DataSpec) -> Dataset:
    folder = spec.folder or spec.root
    files, labels, classes = class_folders(folder)
    top = [f for f in list_images(folder) if f.parent == folder] if folder.is_dir() else []
    if len(classes) >= 2 and not top:
        return ImageFiles(check_image_files(files, folder), labels, square_transform(spec.imsize), spec.draft)
    files = list_images(folder) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"no images found under {folder}{no_images_hint(folder)}; pass --data_dir with a folder of images "
                           f"(optionally one sub-folder per class)")
    return ImageFiles(check_image_files(files, folder), None, square_transform(spec.imsize), spec.draft)


@dataclass(frozen=True)
class DatasetInfo:
    """One entry of DATASETS: how to build it, its classes, its held-out split, how to fetch it."""

    build: Callable[[DataSpec], Dataset]
    num_classes: int | None  # 0: unlabelled; None: one class per sub-folder (the built dataset says how many)
    what: str  # what the images are
    data_dir: str  # what --data_dir names for it
    download: str | None = None  # the `bash download.sh` argument that fetches it
    test_split: Callable[[DataSpec], Dataset] | None = None  # held out for the classifier metric (classifier.py)
    class_names: tuple[str, ...] = ()  # label -> name, where the dataset names its classes
    decodes_files: bool = False  # its images are decoded from files at every read (what --data_cache keeps)


DATASETS: dict[str, DatasetInfo] = {
    "shapes": DatasetInfo(_shapes, 4, "generated coloured shapes on noise (seeded, identical on every machine)", "nothing (generated)",
                          test_split=lambda spec: Shapes(spec.imsize, size=2000, seed=SHAPES_SEED + 1),  # other seed: other images
                          class_names=SHAPE_CLASSES),
    "celeb": DatasetInfo(_celeb, 0, "CelebA faces", "the folder of the images", "CelebA", decodes_files=True),
    "lsun": DatasetInfo(_lsun, 0, "one LSUN scene category (--lsun_category)", "the lmdb folder of the LSUN category", "LSUN",
                        decodes_files=True),
    "cifar10": DatasetInfo(_cifar10, 10, "CIFAR-10", "the cifar-10-batches-py folder", "cifar10",
                           class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "fashion_mnist": DatasetInfo(lambda spec: FashionMNIST(fmnist_folder(spec), spec.imsize, "train"), 10,
                                 "Fashion-MNIST clothing (grey)", "the folder of the four idx files", "fashion_mnist",
                                 test_split=lambda spec: FashionMNIST(fmnist_folder(spec), spec.imsize, "test"), class_names=FMNIST_CLASSES),
    "imagenet": DatasetInfo(_imagenet, 1000, "ImageNet ILSVRC2012 train", "the folder of the class folders", decodes_files=True),
    "folder": DatasetInfo(_folder, None, "your own images, flat or one sub-folder per class", "the folder of the images",
                          decodes_files=True),
}
ALIASES = {"cifar": "cifar10"}  # heykeetae's spelling


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[ALIASES.get(name, name)]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def classifier_datasets() -> list[str]:
    """The labelled datasets with a held-out split: the ones the offline classifier metric can score."""
    return [name for name, info in DATASETS.items() if info.test_split is not None]


def build_test_split(spec: DataSpec) -> Dataset | None:
    """The held-out labelled split of the dataset for the classifier metric, or None when it has none."""
    split = dataset_info(spec.dataset).test_split
    return split(spec) if split is not None else None


def build_dataset(spec: DataSpec) -> tuple[Dataset, int]:
    """The dataset (its first --max_images items, if set; read from --data_cache, if set) and its number of
    classes (0 when unlabelled)."""
    info = dataset_info(spec.dataset)
    if spec.folder is not None and spec.folder.exists() and not spec.folder.is_dir():
        raise DatasetError(f"--data_dir {spec.folder} is a file, not a folder; pass {info.data_dir}")
    dataset = info.build(spec)
    num_classes = getattr(dataset, "num_classes", info.num_classes or 0)
    if spec.max_images and spec.max_images < len(dataset):
        dataset = Subset(dataset, range(spec.max_images))
    if spec.data_cache:
        dataset = cached_dataset(dataset, spec)
    return dataset, num_classes


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices for one process: the epoch's permutation comes from (seed, epoch); process
    `rank` of `world` takes every world-th index of it (as DistributedSampler does, after dropping the
    tail so that every process has the same number of batches); the last partial batch is dropped.
    `set_epoch(epoch, start)` makes the next iteration begin at batch `start` of that epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0
        if len(self) == 0:
            total = f"--batch_size {batch_size} x {world} processes" if world > 1 else f"--batch_size {batch_size}"
            raise DatasetError(f"{total} is larger than the dataset ({n} images); use a smaller batch")

    def __len__(self) -> int:
        return (self.n // self.world) // self.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: (self.n // self.world) * self.world]
        mine = perm[self.rank :: self.world]
        for b in range(self.start, len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGTERM/SIGINT, which a scheduler or Ctrl-C sends to the whole process group:
    the main process finishes its step and saves, then closes the loader, which ends the workers."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def close_loader(loader: DataLoader | None) -> None:
    """Stop a loader's worker processes, whatever state they are in. Workers ignore SIGTERM (so that a stop
    signal to the process group reaches the main process first), so torch's own shutdown, which ends
    stragglers with SIGTERM, could wait for them forever: a worker still alive after it is SIGKILLed."""
    it = getattr(loader, "_iterator", None)
    if it is None:
        return
    workers = list(getattr(it, "_workers", []))
    try:
        it._shutdown_workers()
    except Exception:  # noqa: BLE001 - a broken iterator: its workers are killed below
        pass
    for w in workers:
        if w.is_alive():
            os.kill(w.pid, signal.SIGKILL)
        w.join(timeout=5)
    loader._iterator = None


MAX_AUTO_WORKERS = 16
PREFETCH_FACTOR = 4  # batches each worker keeps ready (torch's default is 2)


def in_memory(dataset: Dataset) -> bool:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return bool(getattr(base, "in_memory", False))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which SLURM and taskset narrow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(dataset: Dataset, local_processes: int = 1) -> int:
    """--num_workers auto: 0 for in-memory datasets; else the usable CPUs shared by the processes of this
    node (torchrun's LOCAL_WORLD_SIZE), at least 1, at most MAX_AUTO_WORKERS."""
    if in_memory(dataset):
        return 0
    return max(1, min(MAX_AUTO_WORKERS, usable_cpus() // max(1, local_processes)))


def workers_for(num_workers: int | None, dataset: Dataset) -> int:
    """--num_workers, or its automatic value when not given (None)."""
    if num_workers is not None:
        return num_workers
    return default_workers(dataset, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def get_loader(dataset: Dataset, device: torch.device, batch_size: int, seed: int, num_workers: int | None = None,
               rank: int = 0, world: int = 1) -> DataLoader:
    """The training loader: `EpochBatchSampler` batches of --batch_size per process; workers persist
    across epochs and keep PREFETCH_FACTOR batches each ready; pinned memory on CUDA. The trainer moves
    it with `batch_sampler.set_epoch`."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world)
    workers = workers_for(num_workers, dataset)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(seed),  # worker seeds; never the global RNG
    )


# ----------------------------------------------------------------------------------------------
# The decoded-image cache (--data_cache)

CACHE_VERSION = 1
CACHE_BATCH = 64  # images per write while the cache is built


class CachedImages(ReadableItems):
    """A file-decoding dataset's items, decoded and transformed once, read back from a uint8 .npy file of shape
    (N, 3, imsize, imsize) through a memory map (opened lazily in each loader worker). Item i holds exactly
    what the source dataset returned for i, to the last bit (every transform ends in `to_signed_tensor`), with
    unreadable files replaced as `ReadableItems` replaces them; their
    flags and names come from the cache's .json, so the trainer's warning and its 1% limit still apply."""

    def __init__(self, path: Path, meta: dict, source_files: list[Path]) -> None:
        super().__init__(int(meta["count"]))
        self.path, self.files, self.images = path, source_files, None
        self.labels = torch.tensor(meta["labels"], dtype=torch.int64)
        self.bad_names = {int(i): name for i, name in meta["bad"].items()}
        for i in self.bad_names:
            self.bad[i] = True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "images": None}  # workers map the file themselves; never pickle the pixels

    def source_files(self) -> list[Path]:
        return list(self.files)

    def name(self, i: int) -> str:
        return self.bad_names.get(i, f"item {i} of {self.path}")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")
        return uint8_to_signed(torch.from_numpy(np.array(self.images[i]))), int(self.labels[i])  # (3, H, W), copied out of the map


def cache_key(dataset: Dataset, spec: DataSpec, decode: str) -> str:
    """Changes when the images, their order, the dataset, the size or the decode change: the source files'
    names, sizes and modification times, and every item's name."""
    base, indices = unwrap(dataset)
    h = hashlib.sha256(json.dumps([CACHE_VERSION, spec.dataset, spec.imsize, decode, len(dataset)]).encode())
    files = base.source_files()
    if indices is not None and len(files) == len(base):  # one file per item: only the items used
        files = [files[j] for j in indices.tolist()]
    hash_file_stats(h, files, "data cache: checking the source files")
    for j in range(len(base)) if indices is None else indices.tolist():
        h.update(f"{base.name(j)}\n".encode())
    return h.hexdigest()[:16]


def read_cache_meta(stem: Path, key: str, shape: tuple[int, ...]) -> dict | None:
    """The cache's metadata when its .json and .npy are complete and match `key` and `shape`; else None."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        images = np.load(stem.with_suffix(".npy"), mmap_mode="r")
    except (OSError, ValueError):  # missing, half-copied, or not ours
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("key") != key or tuple(images.shape) != shape or images.dtype != np.uint8:
        return None
    return meta


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (torchrun's processes and concurrent jobs build a cache once); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_cache(dataset: Dataset, stem: Path, shape: tuple[int, ...], key: str, spec: DataSpec, decode: str) -> dict:
    """Decode every item of `dataset` into stem.npy (durably: a crash leaves no partial cache), then write stem.json."""
    n = shape[0]
    need = int(np.prod(shape)) + 128
    free = shutil.disk_usage(stem.parent).free
    if need > free:
        raise DatasetError(f"--data_cache {stem.parent}: the decoded images need {size_text(need)} and the disk has "
                           f"{size_text(free)} free; point --data_cache at a larger disk, or drop it")
    workers = workers_for(None, dataset)
    loader = DataLoader(dataset, batch_size=CACHE_BATCH, shuffle=False, num_workers=workers, persistent_workers=workers > 0,
                        worker_init_fn=ignore_stop_signals)  # persistent: close_loader finds and ends the workers
    labels: list[int] = []
    say_main(f"data cache: decoding {n:,} images once into {stem.with_suffix('.npy')} ({size_text(need)}; later runs read it)")

    def write(f: "io.BufferedWriter") -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with Progress("data cache: decoding", n, "images") as p:
            for x, y in loader:
                f.write(to_uint8(x).numpy().tobytes())
                labels.extend(int(v) for v in y)
                p.update(len(x))
        check_bad_files(dataset)  # more than MAX_BAD_FRACTION unreadable: stop before the file counts as written

    try:
        write_durably(stem.with_suffix(".npy"), write)
    except OSError as e:
        raise DatasetError(f"could not write the data cache {stem.with_suffix('.npy')}: {why_not_written(e, stem.parent)}; "
                           f"nothing was kept; free space or point --data_cache elsewhere") from None
    finally:
        close_loader(loader)
    base, indices = unwrap(dataset)
    flags = base.bad if indices is None else base.bad[indices]
    where = torch.nonzero(flags).flatten().tolist()
    names = {str(i): base.name(i if indices is None else int(indices[i])) for i in where}
    meta = {"version": CACHE_VERSION, "key": key, "count": n, "dataset": spec.dataset, "imsize": spec.imsize,
            "decode": decode, "labels": labels, "bad": names}
    write_json(stem.with_suffix(".json"), meta)
    return meta


def cached_dataset(dataset: Dataset, spec: DataSpec) -> CachedImages:
    """`dataset` read from the cache under --data_cache, which is built first when missing or out of date."""
    base, _ = unwrap(dataset)
    if not dataset_info(spec.dataset).decodes_files:
        files = ", ".join(name for name, info in DATASETS.items() if info.decodes_files)
        raise DatasetError(f"--data_cache keeps images decoded from files ({files}); {spec.dataset} decodes none: drop --data_cache")
    folder = Path(spec.data_cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"--data_cache {folder}: cannot create the folder ({e.strerror}); pass a writable folder") from None
    decode = "full" if getattr(base, "draft", None) is None else "reduced"  # CelebA's pixel crop always decodes in full
    key = cache_key(dataset, spec, decode)
    stem = folder / f"{spec.dataset}-{spec.imsize}px-{decode}-{key}"
    shape = (len(dataset), 3, spec.imsize, spec.imsize)
    with cache_lock(stem.with_suffix(".lock")):
        meta = read_cache_meta(stem, key, shape)
        if meta is None:
            meta = write_cache(dataset, stem, shape, key, spec, decode)
        else:
            say_main(f"data cache: reading {len(dataset):,} decoded images from {stem.with_suffix('.npy')}")
    return CachedImages(stem.with_suffix(".npy"), meta, base.source_files())


def size_text(n: int) -> str:
    """'63.0 GiB', '12.3 MiB'."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def say_main(msg: str) -> None:
    """Print on stderr from the first process only (torchrun's RANK 0, or a plain run)."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, file=sys.stderr, flush=True)
