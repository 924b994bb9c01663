"""Offline quality metrics for labelled datasets: two classifiers trained on the real images.

For datasets that have labels but no Inception weights on the machine (`shapes`, Fashion-MNIST).
Two classifiers of different architectures, each with its own fixed seed, are trained once on the
real training split and cached:
- the **tuning classifier** (`SmallCNN`: three conv-BN-ReLU-maxpool stages, a 128-d hidden layer,
  no augmentation). Its scores choose things: presets' schedules, ablation steps, best_* checkpoints.
- the **independent classifier** (`GapCNN`: four wider conv-BN-ReLU stages with average pooling,
  global average pooling to 128-d features, dropout, trained with random shifts and flips). It plays
  no part in any choice; it reports. A choice made with one metric is reported with the other.

Each figure is named with its sample count:
- `cls_acc10k` / `ind_acc10k` ("GAN-test", Shmelkov, Schmid and Alahari, "How good is my GAN?", ECCV
  2018): the fraction of class-conditional samples that the tuning / independent classifier assigns
  to the class G was asked for, overall and per class. `gan_test10k`, the headline, is the lower.
- `gan_train_acc10k` ("GAN-train", same paper): a fresh tuning-architecture classifier is trained on
  the samples and their requested labels, then tested on the real held-out split. It falls when G
  covers only part of each class (mode collapse), which GAN-test does not see.
- `fid_cls10k`: the Frechet distance (Heusel et al. 2017) between the tuning classifier's 128-d
  features of the samples and of the real training images.
- `cls_precision10k` / `cls_recall10k`: improved precision and recall (Kynkaanniemi et al. 2019,
  k = 3 nearest neighbours) in the tuning classifier's features against the real test images, overall
  and per class (the samples of class c against the test images of class c). Recall falls when G draws
  only part of a class; this is the within-class variety figure that a tuning rule may use.
- `ind_fd10k`: the Frechet distance in the independent classifier's 128-d features between the
  samples and the real **test** images, overall and per class (samples of class c against test
  images of class c).
- `ind_precision10k` / `ind_recall10k`: the same precision and recall in the independent classifier's
  features, which report and choose nothing.
- For scale, every class accuracy, precision, recall and independent figure is also computed for as
  many real **training** images as there are samples (chosen by a fixed seed) against the same test
  images (`real` in the result): what a perfect generator would score with the same sample count, so
  the same estimator bias.
These do not compare with Inception IS/FID or with numbers from other classifiers: they are for
comparing runs of this code on the same dataset.

Protocol: samples come from `metrics.generate` (z ~ N(0, I), uniform labels, a private seed, G in
eval mode) and are quantised to uint8 exactly as written PNGs are; real images pass through the same
quantisation, so the classifiers see both the same way. Each classifier is trained with Adam (lr 2e-3,
cosine decay, batches of 128) from its own fixed seed (not the training run's --seed, so that every
run, every seed of an ablation included, is scored by the same classifiers), and cached in
`<cache>/classifier/` with its held-out accuracy (the tuning one also with its reference feature
statistics); a change of the data (its fingerprint), the image size, the seed or the recipe's
version trains it again. GAN-train uses the tuning recipe on the samples; the cache also records
what that recipe scores when trained on 10,000 real training images (`gan_train_real`), the ceiling
a perfect generator reaches.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from metrics import (EvalError, count_tag, dataset_fingerprint, fid_from_stats, generate, metric_tag, private_rng,
                     reference_indices, sampling_record, save_atomic, to_uint8, truncation_note)
from progress import check_abort, track

if TYPE_CHECKING:
    from drs import RejectionSampler

SEED = 0  # the tuning classifier's own seed, the same for every run it scores
VERSION = 2  # bump when the tuning architecture or recipe changes: old caches are then never reused
EPOCHS = 4
MAX_STEPS = 1500  # Fashion-MNIST: 3.2 epochs of 60,000 images
BATCH = 128
LR = 2e-3
FEATURES = 128
PR_K = 3  # neighbourhood size of improved precision/recall (Kynkaanniemi et al. 2019)
SHIFT = 3  # the independent classifier's augmentation: random shifts of up to SHIFT pixels, and flips


class SmallCNN(nn.Module):
    """The tuning classifier: uint8-derived [-1, 1] images (N, 3, S, S) -> logits; `features` is the
    128-d penultimate layer."""

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


class GapCNN(nn.Module):
    """The independent classifier: four conv-BN-ReLU stages (24, 48, 96, 128 channels at S, S/2, S/4,
    S/8) with 2x2 average pooling between them, global average pooling to the 128-d `features`,
    dropout 0.2 and a linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate((24, 48, 96, FEATURES)):
            layers += ([nn.AvgPool2d(2)] if i else []) + [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURES, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (N, 128)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))  # (N, K)


@dataclass(frozen=True)
class Recipe:
    """How one classifier is built and trained."""

    name: str
    make: Callable[[int], nn.Module]
    seed: int
    version: int
    epochs: int
    max_steps: int
    augment: bool


TUNING = Recipe("tuning", SmallCNN, SEED, VERSION, EPOCHS, MAX_STEPS, augment=False)
INDEPENDENT = Recipe("independent", GapCNN, seed=1, version=1, epochs=3, max_steps=1200, augment=True)


def as_input(x_uint8: Tensor) -> Tensor:
    return x_uint8.float() / 127.5 - 1.0


def shift_and_flip(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image of x (N, C, S, S) in [-1, 1] shifted by up to SHIFT pixels each way (the border filled
    with -1, black) and flipped left-right with probability 1/2."""
    n, _, s, _ = x.shape
    padded = nn.functional.pad(x, (SHIFT,) * 4, value=-1.0)  # (N, C, S+2k, S+2k)
    off = torch.randint(0, 2 * SHIFT + 1, (n, 2), generator=g)
    rows = (off[:, 0:1] + torch.arange(s))[:, :, None]  # (N, S, 1)
    cols = (off[:, 1:2] + torch.arange(s))[:, None, :]  # (N, 1, S)
    out = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (N, C, S, S)
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def stack_uint8(dataset: Dataset, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """All images of a labelled dataset as uint8 (N, 3, S, S) (quantised as written PNGs are) and labels (N,)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        generator=torch.Generator())  # its iterator's base seed comes from here, not the global RNG
    xs, ys = zip(*((to_uint8(x), torch.as_tensor(y)) for x, y in loader))
    return torch.cat(xs), torch.cat(ys)


def fit(images: Tensor, labels: Tensor, num_classes: int, seed: int, device: torch.device,
        what: str = "classifier training", recipe: Recipe = TUNING) -> nn.Module:
    """Train `recipe`'s classifier on uint8 images: `epochs` epochs of BATCH random images, at most
    `max_steps` Adam steps (seeded; the global RNGs are untouched); progress lines name it `what`."""
    steps = min(recipe.max_steps, -(-recipe.epochs * len(images) // BATCH))
    with private_rng(device):
        torch.manual_seed(seed)
        net = recipe.make(num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g = torch.Generator().manual_seed(seed)
        per_epoch = max(1, len(images) // BATCH)
        perm = torch.randperm(len(images), generator=g)
        for step in track(range(steps), what, steps, "steps"):
            if step % per_epoch == 0 and step:
                perm = torch.randperm(len(images), generator=g)
            idx = perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
            x = as_input(images[idx])
            if recipe.augment:
                x = shift_and_flip(x, g)
            loss = nn.functional.cross_entropy(net(x.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(logits (N, K), features (N, 128)) of uint8 images, in eval mode."""
    device = next(net.parameters()).device
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        check_abort(f"classifier predictions for {len(images):,} images")
        f = net.features(as_input(images[i:i + batch_size]).to(device))
        feats.append(f.cpu())
        logits.append(net.head(f).cpu())
    return torch.cat(logits), torch.cat(feats)


def accuracy(net: nn.Module, images: Tensor, labels: Tensor) -> float:
    return (predict(net, images)[0].argmax(1) == labels).float().mean().item()


def feature_stats(feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between two feature sets (N, D), (M, D); nan when either has fewer than 2 rows."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return fid_from_stats(*feature_stats(a), *feature_stats(b))


def knn_radii(f: Tensor, k: int, chunk: int = 1000) -> Tensor:
    """Distance from each row of f (N, D) to its k-th nearest other row (N,)."""
    return torch.cat([torch.cdist(f[i:i + chunk], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), chunk)])


def covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1000) -> float:
    """The fraction of `points` inside at least one ball (centres, radii)."""
    hits = [(torch.cdist(points[i:i + chunk], centres) <= radii[None]).any(1) for i in range(0, len(points), chunk)]
    return torch.cat(hits).float().mean().item()


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_K, real_radii: Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the fraction of fakes
    inside the k-NN ball of some real point, recall the fraction of reals inside the k-NN ball of some
    fake. nan when either set has k points or fewer."""
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    radii = knn_radii(real, k) if real_radii is None else real_radii
    return covered(fake, real, radii), covered(real, fake, knn_radii(fake, k))


@dataclass
class RealNeighbourhoods:
    """One classifier's features of the real test images (N, D) and their k-NN radii, overall and per
    class: what improved precision and recall measure samples against in that classifier's space."""

    feats: Tensor
    radii: Tensor | None
    class_feats: list[Tensor]  # the rows of class c
    class_radii: list[Tensor | None]

    @classmethod
    def of(cls, net: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> "RealNeighbourhoods":
        feats = predict(net, x)[1]
        each = [feats[y == c] for c in range(num_classes)]
        radii = [knn_radii(f, PR_K) if len(f) > PR_K else None for f in (feats, *each)]  # None: too few to measure
        return cls(feats, radii[0], each, radii[1:])

    def precision_recall(self, feats: Tensor, y: Tensor) -> tuple[float, float, list[float], list[float]]:
        """Precision and recall of sample features (M, D) with requested labels y: overall, then per
        class (the samples of class c against the real images of class c)."""
        p, r = precision_recall(self.feats, feats, real_radii=self.radii)
        each = [precision_recall(real, feats[y == c], real_radii=radii)
                for c, (real, radii) in enumerate(zip(self.class_feats, self.class_radii))]
        return p, r, [e[0] for e in each], [e[1] for e in each]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def per_class(hit: Tensor, y: Tensor, num_classes: int) -> list[float]:
    return [hit[y == c].float().mean().item() if (y == c).any() else float("nan") for c in range(num_classes)]


class ClassifierEvaluator:
    """Trains (or loads) both classifiers once; `__call__(G, n)` scores a class-conditional generator.

    Same interface as `metrics.Evaluator`: the result dict, `scalars`, `best`, `format`. The best_*
    checkpoints are chosen by the tuning classifier alone."""

    best = (("cls_acc", "cls_acc", "max"), ("fid_cls", "fid_cls", "min"),  # (checkpoint best_<name>, metric, direction)
            ("cls_min", "cls_acc_min", "max"))
    SCALARS = ("gan_test", "cls_acc", "cls_acc_min", "ind_acc", "gan_train_acc", "fid_cls", "cls_precision", "cls_recall",
               "ind_fd", "ind_precision", "ind_recall")  # the figures logged to TensorBoard (`scalars`)

    def __init__(self, dataset: Dataset, test: Dataset, dataset_name: str, imsize: int, num_classes: int,
                 device: torch.device, cache_dir: Path, n_ref: int, batch_size: int = 64, seed: int = 0,
                 truncation: float = 0.0) -> None:
        if num_classes < 2:
            raise EvalError(f"the classifier metric needs a labelled dataset; {dataset_name} has no labels")
        self.num_classes, self.device, self.batch_size, self.seed = num_classes, device, batch_size, seed
        self.truncation = truncation  # > 0: the samples' z from the truncated normal (sagan_models.truncate_latents)
        self.drs: RejectionSampler | None = None  # set by main.py for --drs: score the samples DRS keeps
        self.name, self.imsize, self.dataset = dataset_name, imsize, dataset
        self.class_names = list(getattr(dataset, "class_names", None) or getattr(getattr(dataset, "dataset", None), "class_names", None)
                                or [str(c) for c in range(num_classes)])
        idx = reference_indices(len(dataset), n_ref)
        meta = {"dataset": dataset_name, "imsize": imsize, "classes": num_classes, "version": VERSION, "seed": seed,
                "train": dataset_fingerprint(dataset), "test": dataset_fingerprint(test), "n_ref": int(len(idx))}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = cache_dir / "classifier" / f"{dataset_name}-{imsize}px-{key}.pt"
        self.test_x, self.test_y = stack_uint8(test)
        cached = self._load(self.path, meta)
        self.cache_hit = cached is not None
        self._train_x: tuple[Tensor, Tensor] | None = None
        if cached is None:
            cached = self._train(idx, meta)
        self.net = SmallCNN(num_classes).to(device)
        self.net.load_state_dict(cached["state_dict"])
        self.net.eval()
        self.test_acc, self.gan_train_real = float(cached["test_acc"]), float(cached["gan_train_real"])
        self.ref_mu, self.ref_sigma = cached["ref_mu"].numpy(), cached["ref_sigma"].numpy()
        self.meta = meta
        self.cls_space = RealNeighbourhoods.of(self.net, self.test_x, self.test_y, num_classes)
        self._independent(meta)
        self._real: dict[int, dict] = {}  # sample count -> every figure of that many real training images
        self._train_x = None

    @staticmethod
    def _load(path: Path, meta: dict) -> dict | None:
        if not path.is_file():
            return None
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is trained again and replaced
            return None
        return cached if cached.get("meta") == meta else None

    def train_images(self) -> tuple[Tensor, Tensor]:
        """All training images as uint8, stacked once while the classifiers are built."""
        if self._train_x is None:
            self._train_x = stack_uint8(self.dataset)
        return self._train_x

    def _train(self, idx: np.ndarray, meta: dict) -> dict:
        t0 = time.perf_counter()
        say(f"classifier metric: training the tuning classifier (a small CNN) on {len(self.dataset):,} real {self.name} images "
            f"(once, about {len(self.dataset) * EPOCHS / 1.6e5:.0f} min on 2 CPU cores; cached in {self.path})")
        x, y = self.train_images()
        net = fit(x, y, self.num_classes, self.seed, self.device, "classifier metric: the tuning classifier")
        test_acc = accuracy(net, self.test_x, self.test_y)
        _, feats = predict(net, x[torch.from_numpy(idx)])
        mu, sigma = feature_stats(feats)
        n = min(len(x), 10_000)  # GAN-train's ceiling: the same recipe on real training images
        ceiling = fit(x[:n], y[:n], self.num_classes, self.seed + 1, self.device, "classifier metric: the GAN-train ceiling")
        out = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "test_acc": test_acc,
               "gan_train_real": accuracy(ceiling, self.test_x, self.test_y),
               "ref_mu": torch.from_numpy(mu), "ref_sigma": torch.from_numpy(sigma), "meta": meta}
        save_atomic(out, self.path)
        say(f"classifier metric: tuning classifier {test_acc:.1%} on {len(self.test_y):,} real test images, "
            f"GAN-train recipe on real images {out['gan_train_real']:.1%} ({time.perf_counter() - t0:.0f} s)")
        return out

    def _independent(self, tuning_meta: dict) -> None:
        """Load or train the independent classifier, then its features of the real test images."""
        r = INDEPENDENT
        meta = {**tuning_meta, "recipe": r.name, "version": r.version, "seed": r.seed}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        self.ind_path = self.path.with_name(f"{self.name}-{self.imsize}px-independent-{key}.pt")
        cached = self._load(self.ind_path, meta)
        self.ind_cache_hit = cached is not None
        if cached is None:
            t0 = time.perf_counter()
            say(f"classifier metric: training the independent classifier (wider, global average pooling, shifts and flips) "
                f"on {len(self.dataset):,} real {self.name} images (once; cached in {self.ind_path})")
            x, y = self.train_images()
            net = fit(x, y, self.num_classes, r.seed, self.device, "classifier metric: the independent classifier", r)
            cached = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                      "test_acc": accuracy(net, self.test_x, self.test_y), "meta": meta}
            save_atomic(cached, self.ind_path)
            say(f"classifier metric: independent classifier {cached['test_acc']:.1%} on {len(self.test_y):,} real test images "
                f"({time.perf_counter() - t0:.0f} s)")
        self.ind = r.make(self.num_classes).to(self.device)
        self.ind.load_state_dict(cached["state_dict"])
        self.ind.eval()
        self.ind_test_acc = float(cached["test_acc"])
        self.ind_space = RealNeighbourhoods.of(self.ind, self.test_x, self.test_y, self.num_classes)

    def independent_figures(self, x: Tensor, y: Tensor) -> dict:
        """GAN-test accuracy, FD and precision/recall of uint8 images x with labels y in the independent
        classifier's features against the real test images: overall and per class."""
        logits, feats = predict(self.ind, x)
        hit = logits.argmax(1) == y
        space = self.ind_space
        p, r, p_each, r_each = space.precision_recall(feats, y)
        return {"ind_acc": hit.float().mean().item(), "ind_acc_per_class": per_class(hit, y, self.num_classes),
                "ind_fd": frechet(feats, space.feats),
                "ind_fd_per_class": [frechet(feats[y == c], real) for c, real in enumerate(space.class_feats)],
                "ind_precision": p, "ind_recall": r, "ind_precision_per_class": p_each, "ind_recall_per_class": r_each}

    def tuning_figures(self, logits: Tensor, feats: Tensor, y: Tensor) -> dict:
        """GAN-test accuracy and precision/recall, from the tuning classifier's logits and features of images
        with labels y, against the real test images: overall and per class. Recall here is the within-class
        variety figure a tuning rule may use (the independent one chooses nothing)."""
        hit = logits.argmax(1) == y
        p, r, p_each, r_each = self.cls_space.precision_recall(feats, y)
        return {"cls_acc": hit.float().mean().item(), "cls_acc_per_class": per_class(hit, y, self.num_classes),
                "cls_precision": p, "cls_recall": r, "cls_precision_per_class": p_each, "cls_recall_per_class": r_each}

    def real_figures(self, n: int) -> dict:
        """Both classifiers' figures for n real training images (a fixed choice): the scale every sample
        figure is read against."""
        if n not in self._real:
            idx = reference_indices(len(self.dataset), n)
            x, y = stack_uint8(Subset(self.dataset, idx.tolist()))
            out = {**self.independent_figures(x, y), **self.tuning_figures(*predict(self.net, x), y), "images": len(y)}
            self._real[n] = out
        return self._real[n]

    def __call__(self, G: nn.Module, n: int, source: str = "generator") -> dict:
        if G.cfg.num_classes != self.num_classes:
            raise EvalError(f"the classifier metric scores class-conditional generators of {self.num_classes} classes; "
                            f"this one has {G.cfg.num_classes}")
        if n < 10:
            raise EvalError(f"need at least 10 samples for the classifier metric, got {n}; raise --eval_samples")
        x, y = self.samples(G, n)
        logits, feats = predict(self.net, x)
        mu, sigma = feature_stats(feats)
        gan_train = fit(x, y, self.num_classes, self.seed + 1, self.device, f"evaluation: GAN-train classifier on {n:,} samples")
        m = {
            **self.tuning_figures(logits, feats, y),
            **self.independent_figures(x, y),
            "gan_train_acc": accuracy(gan_train, self.test_x, self.test_y),
            "fid_cls": fid_from_stats(mu, sigma, self.ref_mu, self.ref_sigma),
            "samples": n, "ref_samples": self.meta["n_ref"], "truncation": self.truncation,
            "classifier_test_acc": self.test_acc, "ind_test_acc": self.ind_test_acc, "gan_train_real": self.gan_train_real,
            "real": self.real_figures(n),
        }
        m["gan_test"] = min(m["cls_acc"], m["ind_acc"])
        drawn = [a for a in m["cls_acc_per_class"] if not math.isnan(a)]  # classes with samples (one without any is nan)
        m["cls_acc_min"] = min(drawn, default=float("nan"))  # the weakest class by the tuning classifier: best_cls_min
        m.update(sampling_record(G, self.drs))
        return {"source": source, "metrics": m,
                "reference": {"dataset": self.name, "split": "train", "imsize": self.imsize, "n": self.meta["n_ref"],
                              "fingerprint": self.meta["train"][:16], "cache": str(self.path), "cache_hit": self.cache_hit},
                "classifier": {"path": str(self.path), "test_acc": self.test_acc, "test_images": len(self.test_y),
                               "version": VERSION, "independent_path": str(self.ind_path),
                               "independent_test_acc": self.ind_test_acc, "independent_version": INDEPENDENT.version},
                "class_names": self.class_names,
                "protocol": VERSION}

    def samples(self, G: nn.Module, n: int) -> tuple[Tensor, Tensor]:
        """n uint8 samples of G (eval mode, the evaluation seed) and their requested labels."""
        xs, ys = zip(*generate(G, n, self.batch_size, next(G.parameters()).device, truncation=self.truncation, drs=self.drs))
        return torch.cat(xs), torch.cat(ys)

    def class_accuracy(self, G: nn.Module, n: int) -> float:
        """GAN-test by the tuning classifier alone (cls_acc): cheap enough to check often while tuning
        (bench.py --time_to_acc)."""
        x, y = self.samples(G, n)
        return (predict(self.net, x)[0].argmax(1) == y).float().mean().item()

    def folder(self, folder: Path) -> dict:
        raise EvalError("the classifier metric needs the requested class of every sample, which a folder of images "
                        "does not hold; score folders with Inception weights (--inception_weights)")

    @staticmethod
    def scalars(m: dict) -> dict[str, float]:
        t = metric_tag(m)
        return {f"metrics/{k}{t}": m[k] for k in ClassifierEvaluator.SCALARS}

    @staticmethod
    def format(result: dict) -> str:
        """The evaluation as a table: one line per figure, overall then per class, with real data's own
        figure (as many real training images as samples) beneath each independent one."""
        m, ref, c = result["metrics"], result["reference"], result["classifier"]
        real = m["real"]
        t = metric_tag(m)
        names = [n[:8] for n in result.get("class_names") or range(len(m["cls_acc_per_class"]))]
        pct = "{:>8.1%}".format
        num = "{:>8.3f}".format

        w = 44 + len(t) - len(count_tag(m["samples"]))  # the label column, wider by a truncation or DRS suffix

        def row(label: str, overall: float, each: list[float], fmt: Callable[[float], str]) -> str:
            return f"{label:<{w}}{fmt(overall)}  " + " ".join(fmt(v) for v in each)

        lines = [
            f"{'source':<{w}}{result['source']}",
            f"{'samples':<{w}}{m['samples']:,} (uniform labels{truncation_note(m, '; ')}); real scale: {real['images']:,} real training images",
            f"{'':<{w}}{'all':>8}  " + " ".join(f"{n:>8}" for n in names),
            row(f"gan_test{t} (GAN-test: the lower of the two)", m["gan_test"], [min(a, b) for a, b in zip(m["cls_acc_per_class"], m["ind_acc_per_class"])], pct),
            row(f"cls_acc{t} (tuning classifier)", m["cls_acc"], m["cls_acc_per_class"], pct),
            row("  real training images", real["cls_acc"], real["cls_acc_per_class"], pct),
            row(f"cls_precision{t} (tuning, k={PR_K}, vs test)", m["cls_precision"], m["cls_precision_per_class"], pct),
            row("  real training images", real["cls_precision"], real["cls_precision_per_class"], pct),
            row(f"cls_recall{t} (tuning, k={PR_K}, vs test)", m["cls_recall"], m["cls_recall_per_class"], pct),
            row("  real training images", real["cls_recall"], real["cls_recall_per_class"], pct),
            row(f"ind_acc{t} (independent classifier)", m["ind_acc"], m["ind_acc_per_class"], pct),
            row("  real training images", real["ind_acc"], real["ind_acc_per_class"], pct),
            row(f"ind_fd{t} (independent features, vs test)", m["ind_fd"], m["ind_fd_per_class"], num),
            row("  real training images", real["ind_fd"], real["ind_fd_per_class"], num),
            row(f"ind_precision{t} (k={PR_K}, vs test)", m["ind_precision"], m["ind_precision_per_class"], pct),
            row("  real training images", real["ind_precision"], real["ind_precision_per_class"], pct),
            row(f"ind_recall{t} (k={PR_K}, vs test)", m["ind_recall"], m["ind_recall_per_class"], pct),
            row("  real training images", real["ind_recall"], real["ind_recall_per_class"], pct),
            f"{f'gan_train_acc{t}':<{w}}{m['gan_train_acc']:>8.1%}  (the same recipe on 10,000 real images: {m['gan_train_real']:.1%})",
            f"{f'fid_cls{t}':<{w}}{m['fid_cls']:>8.3f}  (tuning classifier's features vs {ref['n']:,} training images; "
            f"not comparable with Inception FID)",
            f"{'tuning classifier':<{w}}{c['path']}: {c['test_acc']:.1%} on {c['test_images']:,} real test images",
            f"{'independent classifier':<{w}}{c['independent_path']}: {c['independent_test_acc']:.1%} on {c['test_images']:,} real test images",
        ]
        return "\n".join(lines)
