"""Miniatures of the real datasets' on-disk layouts, generated at test time."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    base = rng.integers(0, 256, (1, 1, 3))
    noise = rng.integers(-40, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def celeba(root: Path, n: int = 12, layout: str = "old") -> Path:
    """CelebA aligned images (178x218 JPEG): heykeetae's data/CelebA/... or torchvision's data/celeba/img_align_celeba."""
    folder = root / ("CelebA/img_align_celeba" if layout == "old" else "celeba/img_align_celeba")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        _image(rng, 178, 218).save(folder / f"{i + 1:06d}.jpg", quality=90)
    return folder


def lsun(root: Path, category: str = "church_outdoor", n: int = 12) -> Path:
    """An LSUN-style lmdb: keys are hex ids, values encoded JPEG/WebP images of varied aspect."""
    import lmdb

    db = root / f"{category}_train_lmdb"
    db.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    with lmdb.open(str(db), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for i in range(n):
            buf = io.BytesIO()
            _image(rng, 96 + 8 * i, 64).save(buf, format="WEBP" if i % 2 else "JPEG")
            txn.put(f"{i:040x}".encode(), buf.getvalue())
    return db


def cifar10(root: Path, per_batch: int = 6) -> Path:
    """cifar-10-batches-py with the real pickle structure (data: uint8 (n, 3072), labels: list)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for k in range(1, 6):
        batch = {"batch_label": f"training batch {k} of 5", "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in rng.integers(0, 10, per_batch)], "filenames": [f"img{k}_{i}.png" for i in range(per_batch)]}
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch}, f)
    return folder


def image_folder(root: Path, classes: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"), per_class: int = 4) -> Path:
    """ImageFolder layout (ImageNet train): one sub-folder per class, JPEGs of varied aspect."""
    rng = np.random.default_rng(4)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(rng, 80 + 10 * i, 60).save(root / c / f"{c}_{i}.JPEG")
    return root


def inception_weights(path: Path, seed: int = 0) -> Path:
    """An InceptionV3 with random weights, saved in the format of torch-fidelity's real weights file (a
    plain state dict written by torch.save). Convolutions get He-normal weights and batch norms unit
    statistics, so that features neither vanish nor explode through the 94 layers."""
    from unittest import mock

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", return_value={}):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            torch.nn.init.zeros_(m.bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
