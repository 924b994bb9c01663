"""Per-class image statistics of a class-conditional generator beside its real training images.

A check on what a sample grid suggests. A grid's columns share their noise vectors across classes, so
eight columns can show every garment light while the distribution is not; these figures come from N
images per class. Each statistic is computed on the foreground, the pixels brighter than 10% of the
range (the datasets it is meant for, Fashion-MNIST first, draw objects on a black background), on the
grey image (the mean of the channels):
- brightness: the foreground's mean value, in [0, 1];
- area: the foreground's share of the image;
- spread: the standard deviation of the foreground's values (prints, patterns, shading);
- detail: the mean absolute 4-neighbour Laplacian over the foreground (fine texture and edges).
Printed per class as the 10th / 50th / 90th percentiles, real then generated. Not a quality metric and
not logged in training: the classifier metric (classifier.py) is that.

    python image_stats.py models/VERSION [--which latest] [--n 1000] [--dataset fashion_mnist] [--data_dir D]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

from checkpoints import CheckpointError, load_generator
from data_loader import DatasetError, DataSpec, build_dataset, dataset_info, unwrap
from metrics import EvalError
from sagan_models import draw_latents, sample

STATS = ("brightness", "area", "spread", "detail")
QUANTILES = (0.1, 0.5, 0.9)
FOREGROUND = 0.1


def image_stats(x: np.ndarray, threshold: float = FOREGROUND) -> dict[str, np.ndarray]:
    """The four statistics of grey images x (N, H, W) in [0, 1], one value per image each."""
    fg = x > threshold  # (N, H, W)
    n = np.maximum(fg.sum((1, 2)), 1)
    mean = (x * fg).sum((1, 2)) / n
    spread = np.sqrt((((x - mean[:, None, None]) ** 2) * fg).sum((1, 2)) / n)
    inner = x[:, 1:-1, 1:-1]
    lap = np.abs(4 * inner - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])  # (N, H-2, W-2)
    detail = (lap * fg[:, 1:-1, 1:-1]).sum((1, 2)) / n
    return {"brightness": mean, "area": fg.mean((1, 2)), "spread": spread, "detail": detail}


def to_grey(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W) in [0, 1]."""
    return (images.float().mean(1) * 0.5 + 0.5).clamp(0, 1).numpy()


def real_by_class(dataset: torch.utils.data.Dataset, num_classes: int, n: int) -> dict[int, np.ndarray]:
    """The first n training images of each class, grey, in [0, 1]."""
    base, indices = unwrap(dataset)
    labels = getattr(base, "labels", None)
    if labels is None:
        raise EvalError("the dataset has no labels; image_stats.py compares a class-conditional G with each class")
    labels = torch.as_tensor(labels)
    indices = torch.arange(len(base)) if indices is None else indices
    out = {}
    for c in range(num_classes):
        rows = indices[labels[indices] == c][:n].tolist()
        out[c] = to_grey(torch.stack([base[i][0] for i in rows])) if rows else np.zeros((0, 1, 1))
    return out


def generated_by_class(G: nn.Module, n: int, seed: int = 0, truncation: float = 0.0) -> dict[int, np.ndarray]:
    """n samples of each class from G (eval mode), grey, in [0, 1]; the noise from its own seeded stream,
    truncated to [-truncation, truncation] when that is > 0 (`truncate_latents`)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    out = {}
    for c in range(G.cfg.num_classes):
        z = draw_latents(n, G.cfg.z_dim, gen, truncation).to(device)  # (n, z_dim)
        out[c] = to_grey(sample(G, z, torch.full((n,), c, dtype=torch.long, device=device), batch_size=500).cpu())
    return out


def table(real: dict[int, np.ndarray], fake: dict[int, np.ndarray], names: list[str]) -> str:
    """One line per class and one for all: each statistic's percentiles, real | generated."""
    def q(v: np.ndarray) -> str:
        return "/".join(f"{x:.2f}" for x in np.quantile(v, QUANTILES)) if len(v) else "-"

    def line(name: str, r: dict[str, np.ndarray], f: dict[str, np.ndarray]) -> str:
        return f"{name[:12]:12s}" + "".join(f"{q(r[k]) + ' | ' + q(f[k]):>36s}" for k in STATS)

    per_class = {c: (image_stats(real[c]), image_stats(fake[c])) for c in sorted(real)}  # (real, generated)
    joined = [{k: np.concatenate([rf[side][k] for rf in per_class.values()]) for k in STATS} for side in (0, 1)]
    rows = [f"{'q10/q50/q90':12s}" + "".join(f"{s + ': real | generated':>36s}" for s in STATS)]
    rows += [line(names[c], r, f) for c, (r, f) in per_class.items()] + [line("all", *joined)]
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder (models/VERSION), an exported folder or hf://USER/REPO")
    p.add_argument("--which", default="latest", help="'latest', a step or a best checkpoint")
    p.add_argument("--n", type=int, default=1000, help="images per class, real and generated")
    p.add_argument("--seed", type=int, default=0, help="the generated images' noise seed")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--image_path", default="data")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--truncation", type=float, default=None,
                   help="draw z truncated to [-T, T] (default: the run's own --truncation; 0: untruncated)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.n < 1:
            raise EvalError(f"--n {a.n}: pass 1 or more images per class")
        lg = load_generator(a.run, a.which)
        cfg = lg.config
        if cfg.num_classes < 1:
            raise EvalError(f"{lg.path} holds an unconditional G; image_stats.py compares each class")
        spec = DataSpec(dataset=a.dataset, imsize=cfg.imsize, image_path=a.image_path, data_dir=a.data_dir,
                        lsun_category="church_outdoor", max_images=0, full_decode=False)
        dataset, num_classes = build_dataset(spec)
        if num_classes != cfg.num_classes:
            raise EvalError(f"{lg.path} draws {cfg.num_classes} classes, --dataset {a.dataset} has {num_classes}; "
                            "pass the dataset the run was trained on")
        real = real_by_class(dataset, num_classes, a.n)
        truncation = float(lg.flags.get("truncation") or 0.0) if a.truncation is None else a.truncation
        fake = generated_by_class(lg.G, a.n, a.seed, truncation)
    except (CheckpointError, DatasetError, EvalError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = list(dataset_info(a.dataset).class_names) or [str(c) for c in range(num_classes)]
    z = f", z truncated to [-{truncation:g}, {truncation:g}]" if truncation else ""
    print(f"{lg.path} (step {lg.step}, {'EMA' if lg.ema else 'raw'} G{z}), {a.n} images per class, foreground > {FOREGROUND}")
    print(table(real, fake, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
