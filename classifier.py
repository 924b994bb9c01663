"""An offline quality metric for labelled datasets: a small classifier trained on the real images.

For datasets that have labels but no Inception weights on the machine (`shapes`, Fashion-MNIST), three
numbers, each named with its sample count:
- `cls_acc10k` ("GAN-test", Shmelkov, Schmid and Alahari, "How good is my GAN?", ECCV 2018): the
  fraction of class-conditional samples that the classifier assigns to the class G was asked for.
- `gan_train_acc10k` ("GAN-train", same paper): a fresh classifier of the same architecture is trained
  on the generated samples and their requested labels, then tested on the real held-out split. It
  falls when G covers only part of each class (mode collapse), which GAN-test does not see.
- `fid_cls10k`: the Frechet distance (Heusel et al. 2017) between the classifier's 128-d penultimate
  features of the samples and of the real training images.
These do not compare with Inception IS/FID or with numbers from other classifiers: they are for
comparing runs of this code on the same dataset.

Protocol: samples come from `metrics.generate` (z ~ N(0, I), uniform labels, a private seed, G in
eval mode) and are quantised to uint8 exactly as written PNGs are; real images pass through the same
quantisation, so the classifier sees both the same way. The classifier (three conv-BN-ReLU-maxpool
stages, a 128-d hidden layer) is trained with Adam (lr 2e-3, cosine decay, batches of 128) for
`EPOCHS` epochs of its images, at most `MAX_STEPS` steps, from the fixed seed `SEED` (not the
training run's --seed, so that every run, every seed of an ablation included, is scored by the same
classifier). It is cached in `<cache>/classifier/` with its held-out accuracy and the reference
feature statistics; a change of the data (its fingerprint), the image size, the seed or this
module's version trains it again.
GAN-train uses the same recipe on the samples; the cache also records what that recipe scores when
trained on 10,000 real training images (`gan_train_real`), the ceiling a perfect generator reaches.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from metrics import (EvalError, _private_rng, count_tag, dataset_fingerprint, fid_from_stats, generate, reference_indices,
                     save_atomic, to_uint8)
from progress import track

SEED = 0  # the classifier's own seed, the same for every run it scores
VERSION = 2  # bump when the architecture or the recipe changes: old caches are then never reused
EPOCHS = 4
MAX_STEPS = 1500  # Fashion-MNIST: 3.2 epochs of 60,000 images
BATCH = 128
LR = 2e-3
FEATURES = 128


class SmallCNN(nn.Module):
    """uint8-derived [-1, 1] images (N, 3, S, S) -> logits; `features` is the 128-d penultimate layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (N, 128)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))  # (N, K)


def as_input(x_uint8: Tensor) -> Tensor:
    return x_uint8.float() / 127.5 - 1.0


def stack_uint8(dataset: Dataset, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """All images of a labelled dataset as uint8 (N, 3, S, S) (quantised as written PNGs are) and labels (N,)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    xs, ys = zip(*((to_uint8(x), torch.as_tensor(y)) for x, y in loader))
    return torch.cat(xs), torch.cat(ys)


def fit(images: Tensor, labels: Tensor, num_classes: int, seed: int, device: torch.device,
        what: str = "classifier training") -> SmallCNN:
    """Train a SmallCNN on uint8 images: EPOCHS epochs of BATCH random images, at most MAX_STEPS Adam steps
    (seeded; the global RNGs are untouched); progress lines name it `what`."""
    steps = min(MAX_STEPS, -(-EPOCHS * len(images) // BATCH))
    with _private_rng(device):
        torch.manual_seed(seed)
        net = SmallCNN(num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(seed)
        per_epoch = max(1, len(images) // BATCH)
        perm = torch.randperm(len(images), generator=g)
        for step in track(range(steps), what, steps, "steps"):
            if step % per_epoch == 0 and step:
                perm = torch.randperm(len(images), generator=g)
            idx = perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
            loss = nn.functional.cross_entropy(net(as_input(images[idx]).to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: SmallCNN, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(logits (N, K), features (N, 128)) of uint8 images, in eval mode."""
    device = next(net.parameters()).device
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(as_input(images[i:i + batch_size]).to(device))
        feats.append(f.cpu())
        logits.append(net.head(f).cpu())
    return torch.cat(logits), torch.cat(feats)


def accuracy(net: SmallCNN, images: Tensor, labels: Tensor) -> float:
    return (predict(net, images)[0].argmax(1) == labels).float().mean().item()


def feature_stats(feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ClassifierEvaluator:
    """Trains (or loads) the classifier once; `__call__(G, n)` scores a class-conditional generator.

    Same interface as `metrics.Evaluator`: the result dict, `scalars`, `best`, `format`."""

    best = (("cls_acc", "cls_acc", "max"), ("fid_cls", "fid_cls", "min"))  # (checkpoint best_<name>, metric, direction)

    def __init__(self, dataset: Dataset, test: Dataset, dataset_name: str, imsize: int, num_classes: int,
                 device: torch.device, cache_dir: Path, n_ref: int, batch_size: int = 64, seed: int = 0) -> None:
        if num_classes < 2:
            raise EvalError(f"the classifier metric needs a labelled dataset; {dataset_name} has no labels")
        self.num_classes, self.device, self.batch_size, self.seed = num_classes, device, batch_size, seed
        self.name, self.imsize = dataset_name, imsize
        idx = reference_indices(len(dataset), n_ref)
        meta = {"dataset": dataset_name, "imsize": imsize, "classes": num_classes, "version": VERSION, "seed": seed,
                "train": dataset_fingerprint(dataset), "test": dataset_fingerprint(test), "n_ref": int(len(idx))}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = cache_dir / "classifier" / f"{dataset_name}-{imsize}px-{key}.pt"
        self.test_x, self.test_y = stack_uint8(test)
        cached = self._load(meta)
        self.cache_hit = cached is not None
        if cached is None:
            cached = self._train(dataset, idx, meta)
        self.net = SmallCNN(num_classes).to(device)
        self.net.load_state_dict(cached["state_dict"])
        self.net.eval()
        self.test_acc, self.gan_train_real = float(cached["test_acc"]), float(cached["gan_train_real"])
        self.ref_mu, self.ref_sigma = cached["ref_mu"].numpy(), cached["ref_sigma"].numpy()
        self.meta = meta

    def _load(self, meta: dict) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            cached = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is trained again and replaced
            return None
        return cached if cached.get("meta") == meta else None

    def _train(self, dataset: Dataset, idx: np.ndarray, meta: dict) -> dict:
        t0 = time.perf_counter()
        say(f"classifier metric: training a small CNN on {len(dataset):,} real {self.name} images "
            f"(once, about {len(dataset) * EPOCHS / 1.6e5:.0f} min on 2 CPU cores; cached in {self.path})")
        x, y = stack_uint8(dataset)
        net = fit(x, y, self.num_classes, self.seed, self.device, "classifier metric: the classifier")
        test_acc = accuracy(net, self.test_x, self.test_y)
        _, feats = predict(net, x[torch.from_numpy(idx)])
        mu, sigma = feature_stats(feats)
        n = min(len(x), 10_000)  # GAN-train's ceiling: the same recipe on real training images
        ceiling = fit(x[:n], y[:n], self.num_classes, self.seed + 1, self.device, "classifier metric: the GAN-train ceiling")
        out = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "test_acc": test_acc,
               "gan_train_real": accuracy(ceiling, self.test_x, self.test_y),
               "ref_mu": torch.from_numpy(mu), "ref_sigma": torch.from_numpy(sigma), "meta": meta}
        save_atomic(out, self.path)
        say(f"classifier metric: held-out accuracy {test_acc:.1%} on {len(self.test_y):,} real test images, "
            f"GAN-train recipe on real images {out['gan_train_real']:.1%} ({time.perf_counter() - t0:.0f} s)")
        return out

    def __call__(self, G: nn.Module, n: int, source: str = "generator") -> dict:
        if G.cfg.num_classes != self.num_classes:
            raise EvalError(f"the classifier metric scores class-conditional generators of {self.num_classes} classes; "
                            f"this one has {G.cfg.num_classes}")
        if n < 10:
            raise EvalError(f"need at least 10 samples for the classifier metric, got {n}; raise --eval_samples")
        x, y = self.samples(G, n)
        logits, feats = predict(self.net, x)
        hit = (logits.argmax(1) == y).float()
        mu, sigma = feature_stats(feats)
        gan_train = fit(x, y, self.num_classes, self.seed + 1, self.device, f"evaluation: GAN-train classifier on {n:,} samples")
        m = {
            "cls_acc": hit.mean().item(),
            "cls_acc_per_class": [hit[y == c].mean().item() if (y == c).any() else float("nan") for c in range(self.num_classes)],
            "gan_train_acc": accuracy(gan_train, self.test_x, self.test_y),
            "fid_cls": fid_from_stats(mu, sigma, self.ref_mu, self.ref_sigma),
            "samples": n, "ref_samples": self.meta["n_ref"],
            "classifier_test_acc": self.test_acc, "gan_train_real": self.gan_train_real,
        }
        return {"source": source, "metrics": m,
                "reference": {"dataset": self.name, "split": "train", "imsize": self.imsize, "n": self.meta["n_ref"],
                              "fingerprint": self.meta["train"][:16], "cache": str(self.path), "cache_hit": self.cache_hit},
                "classifier": {"path": str(self.path), "test_acc": self.test_acc, "test_images": len(self.test_y),
                               "version": VERSION},
                "protocol": VERSION}

    def samples(self, G: nn.Module, n: int) -> tuple[Tensor, Tensor]:
        """n uint8 samples of G (eval mode, the evaluation seed) and their requested labels."""
        xs, ys = zip(*generate(G, n, self.batch_size, next(G.parameters()).device))
        return torch.cat(xs), torch.cat(ys)

    def class_accuracy(self, G: nn.Module, n: int) -> float:
        """GAN-test alone (cls_acc): cheap enough to check often while tuning (bench.py --time_to_acc)."""
        x, y = self.samples(G, n)
        return (predict(self.net, x)[0].argmax(1) == y).float().mean().item()

    def folder(self, folder: Path) -> dict:
        raise EvalError("the classifier metric needs the requested class of every sample, which a folder of images "
                        "does not hold; score folders with Inception weights (--inception_weights)")

    @staticmethod
    def scalars(m: dict) -> dict[str, float]:
        t = count_tag(m["samples"])
        return {f"metrics/cls_acc{t}": m["cls_acc"], f"metrics/gan_train_acc{t}": m["gan_train_acc"],
                f"metrics/fid_cls{t}": m["fid_cls"]}

    @staticmethod
    def format(result: dict) -> str:
        m, ref, c = result["metrics"], result["reference"], result["classifier"]
        t = count_tag(m["samples"])
        rows = [
            ("source", result["source"]),
            (f"cls_acc{t} (GAN-test)", f"{m['cls_acc']:.4f}  per class: " + " ".join(f"{v:.2f}" for v in m["cls_acc_per_class"])),
            (f"gan_train_acc{t}", f"{m['gan_train_acc']:.4f}  (the same recipe on real images: {m['gan_train_real']:.4f})"),
            (f"fid_cls{t}", f"{m['fid_cls']:.4f}  (classifier features; not comparable with Inception FID)"),
            ("samples", f"{m['samples']:,}"),
            ("classifier", f"{c['path']}: {c['test_acc']:.2%} on {c['test_images']:,} real held-out images"),
            ("reference", f"{ref['dataset']} {ref['split']} split, {ref['n']:,} images at {ref['imsize']} px"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
