"""Differentiable augmentation for D (DiffAugment: Zhao, Liu, Lin, Zhu and Han, "Differentiable Augmentation
for Data-Efficient GAN Training", NeurIPS 2020; mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py).

With `--diffaug POLICY` every image D sees, real or generated, in D's steps and in G's, first passes
through the same random transforms. They are differentiable, so G's gradient flows through them; D
cannot tell real from fake by a transform, since both get them; and D sees each real image in many
versions, which keeps it from memorising the training set. Per image, independently:
- `color`: brightness + U(-0.5, 0.5), saturation (x - channel mean) * U(0, 2), contrast
  (x - image mean) * U(0.5, 1.5), in that order. Saturation does nothing to one channel.
- `translation`: a shift by whole pixels, up to 1/8 of the side in each direction, the uncovered
  border filled with 0 (mid-grey in [-1, 1], as the reference pads).
- `cutout`: a square of half the side, centred uniformly in the image and clipped to it, set to 0.

Matches the reference's transforms and ranges; the reference draws cutout centres in [0, side + (1 -
half % 2)) and shifts in [-side/8, side/8]; so does this. The policy names are the reference's. The
random numbers come from torch's global generator on the images' device, so a seeded run is repeatable
and a run without `--diffaug` draws nothing extra (it is bit-identical to one before the flag existed).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(x: Tensor, lo: float, hi: float) -> Tensor:
    """One U(lo, hi) draw per image, shaped (B, 1, 1, 1)."""
    return lo + (hi - lo) * torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    """Brightness, saturation and contrast, each a random factor per image."""
    x = x + _uniform(x, -0.5, 0.5)
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = (x - mean) * _uniform(x, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def translation(x: Tensor, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by up to ratio * side whole pixels per axis; the border comes in as zeros."""
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy + sy  # (B, H, 1): source row in the padded image
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx + sx  # (B, 1, W)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))  # (B, C, H + 2sy, W + 2sx)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def cutout(x: Tensor, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero a square of ratio * side per image, its centre uniform over the image (clipped at the edges)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch) & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)  # (B, 1, H, W) mask


TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> (). Unknown names raise ValueError."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; choose a comma-separated list of {', '.join(TRANSFORMS)}")
    return names


def random_flip(x: Tensor, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability p (one draw per image)."""
    return torch.where(torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p, x.flip(3), x)


def consistency_transform(x: Tensor, flip: bool) -> Tensor:
    """The transform T of consistency regularization (CR-GAN: Zhang, Zhang, Odena and Lee, ICLR 2020; its
    balanced form bCR: Zhao et al., AAAI 2021; StudioGAN src/utils/cr.py): a random mirror, then a shift by
    up to 1/8 of the side (`translation`). Deliberate deviation: the mirror only when `flip` (the run mirrors
    its real images, --flip), since D must not learn that a mirrored image is as real as the image where the
    dataset is not mirror-symmetric (Fashion-MNIST's shoes all point one way)."""
    return translation(random_flip(x) if flip else x)


def diff_augment(x: Tensor, policy: tuple[str, ...]) -> Tensor:
    """Apply the policy's transforms in order (the identity for an empty policy)."""
    for name in policy:
        x = TRANSFORMS[name](x)
    return x
