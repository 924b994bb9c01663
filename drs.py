"""Discriminator rejection sampling (DRS: Azadi, Olsson, Darrell, Goodfellow and Odena, ICLR 2019), the
sampling-time correction that two of SAGAN's authors built on a trained SAGAN: G's samples are kept with a
probability that D's logit sets, so that the kept ones are nearer the data than G's own distribution.

The paper's rule, per candidate x of G:
- D~(x) is D's logit read as the log density ratio log p_data(x) / p_G(x);
- D~*, its largest value, is estimated on burn-in samples and raised whenever a candidate exceeds it;
- F(x) = D~(x) - D~* - log(1 - exp(D~(x) - D~* - eps)) - gamma, eps a small constant for numerical
  stability (1e-6 here) and gamma a shift that sets how many are kept;
- x is kept with probability sigmoid(F(x)).

Choices of this code, each stated where it acts:
- Calibration. The rule needs D's logit on the scale of the log density ratio, which a hinge-trained logit is
  not. The paper adjusts D itself; here D's weights are never changed: the logit is put on that scale by Platt
  scaling (`platt`: a * logit + b fitted with the logistic loss, real training images against G's samples).
  Only a matters: b moves D~ and D~* alike, and F depends on their difference.
- gamma is set for each batch of candidates at the `percentile`-th percentile of F without it, so that a
  candidate at that percentile is kept with probability 1/2; 80 and 95 are the values found in public DRS code.
- Labels. A class-conditional D scores (x, y). Each requested label is filled by candidates of that label,
  so the kept samples carry exactly the labels (and class proportions) asked for, and a class grid keeps its
  rows.
- D scores the images as they are scored and saved: quantised to uint8, then back to [-1, 1].
- With an EMA generator, D was trained against the raw G, not against the G it now judges; the calibration is
  fitted on the EMA G's own samples.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from classifier import as_input, stack_uint8
from metrics import EvalError, eval_latents, reference_indices, to_uint8
from progress import Progress, check_abort
from sagan_models import draw_latents, eval_mode

EPS = 1e-6  # epsilon in F (numerical stability)
CALIBRATION_SAMPLES = 10_000  # real images, and as many samples of G, for the Platt fit and the burn-in maximum
MAX_CANDIDATES_PER_SAMPLE = 1000  # a rejection rate beyond this is a broken D, not a choice: stop with an error
SEED = 4242  # the candidates' private stream (the evaluation z of metrics.EVAL_SEED is not reused)


def real_images(dataset: Dataset, num_classes: int, n: int = CALIBRATION_SAMPLES) -> tuple[Tensor, Tensor | None]:
    """n real training images (a fixed choice: metrics.reference_indices) as uint8, and their labels when G is
    class-conditional (None otherwise)."""
    x, y = stack_uint8(Subset(dataset, reference_indices(len(dataset), n).tolist()))
    return x, (y if num_classes else None)


def platt(real: Tensor, fake: Tensor, steps: int = 100) -> tuple[float, float]:
    """(a, b) minimising the logistic loss of a * s + b on real logits s (label 1) against fake ones (label 0),
    both classes weighted equally (Platt 1999). float64 L-BFGS from (1, 0); a > 0 for a D that ranks real above fake."""
    s = torch.cat([real, fake]).double()
    t = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).double()
    w = torch.cat([torch.full((len(real),), 0.5 / len(real)), torch.full((len(fake),), 0.5 / len(fake))]).double()
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        opt.zero_grad()
        v = (w * nn.functional.binary_cross_entropy_with_logits(ab[0] * s + ab[1], t, reduction="none")).sum()
        v.backward()
        return v

    opt.step(loss)
    a, b = (float(v) for v in ab.detach())
    return a, b


def acceptance(d: Tensor, d_max: float, percentile: float) -> Tensor:
    """Keep-probabilities sigmoid(F) of calibrated logits d (B,) under the current maximum d_max (>= d.max()),
    gamma at the `percentile`-th percentile of F over the batch."""
    delta = (d.double() - d_max).clamp(max=0.0)  # (B,)
    f = delta - torch.log1p(-torch.exp(delta - EPS))
    gamma = torch.quantile(f, percentile / 100.0)
    return torch.sigmoid(f - gamma).float()


class RejectionSampler:
    """DRS for one generator and its discriminator. `draw(y)` returns one kept sample per requested label;
    `generate(n, ...)` yields the evaluation's batches as `metrics.generate` does, with the same labels."""

    def __init__(self, G: nn.Module, D: nn.Module, real: Tensor, real_labels: Tensor | None, percentile: float,
                 batch_size: int = 64, truncation: float = 0.0, seed: int = SEED) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"--drs takes a percentile in (0, 100) (0: off), got {percentile:g}")
        if D.cfg.num_classes != G.cfg.num_classes:
            raise EvalError(f"DRS needs the D trained with this G; D has {D.cfg.num_classes} classes, G {G.cfg.num_classes}")
        self.G, self.D, self.percentile = G, D, percentile
        self.batch_size, self.truncation = batch_size, truncation
        self.device = next(G.parameters()).device
        self.g = torch.Generator().manual_seed(seed)
        self.candidates = self.kept = 0  # over every draw
        self.last = (0, 0)  # (candidates, kept) of the last `generate`
        n = self.calibration = min(len(real), CALIBRATION_SAMPLES)
        if n < 2:
            raise EvalError("DRS calibrates D on real training images, and this dataset has fewer than 2")
        real, real_labels = real[:n], (real_labels[:n] if real_labels is not None else None)
        s_real = self.logits(real, real_labels)
        fake_y = (torch.randint(0, G.cfg.num_classes, (n,), generator=self.g) if G.cfg.num_classes else None)
        fake = self.candidates_for(fake_y, n)
        s_fake = self.logits(fake, fake_y)
        self.scale, self.shift = platt(s_real, s_fake)
        if not self.scale > 0:
            raise EvalError(f"DRS: this D does not score real images above G's (Platt scale {self.scale:.3g}); "
                            f"its logit carries no density ratio to sample with, so run without --drs")
        self.d_max = float(self.calibrated(s_fake).max())  # the burn-in maximum D~*
        self.real_mean, self.fake_mean = float(s_real.mean()), float(s_fake.mean())

    def calibrated(self, s: Tensor) -> Tensor:
        return self.scale * s + self.shift

    @torch.no_grad()
    def logits(self, x_uint8: Tensor, y: Tensor | None) -> Tensor:
        """D's raw logits (N,) of uint8 images, in batches, D in eval mode."""
        out = []
        with eval_mode(self.D):
            for i in range(0, len(x_uint8), self.batch_size):
                xb = as_input(x_uint8[i:i + self.batch_size]).to(self.device)
                yb = y[i:i + self.batch_size].to(self.device) if y is not None else None
                out.append(self.D(xb, yb).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def candidates_for(self, y: Tensor | None, n: int) -> Tensor:
        """n uint8 samples of G for labels y (n,), z from the sampler's own stream."""
        out = []
        with eval_mode(self.G):
            for i in range(0, n, self.batch_size):
                m = min(self.batch_size, n - i)
                z = draw_latents(m, self.G.cfg.z_dim, self.g, self.truncation).to(self.device)
                yb = y[i:i + m].to(self.device) if y is not None else None
                out.append(to_uint8(self.G(z, yb)).cpu())
        return torch.cat(out)

    def draw(self, y: Tensor | None, n: int | None = None) -> Tensor:
        """One kept uint8 sample per requested label in y (n,) (or n samples of an unconditional G), in order.
        Candidates come in full batches whose labels cycle over the still-open requests."""
        n = len(y) if y is not None else int(n or 0)
        out = torch.zeros(n, 3, self.G.cfg.imsize, self.G.cfg.imsize, dtype=torch.uint8)
        open_ = torch.arange(n)
        start = self.candidates
        while len(open_):
            check_abort(f"rejection sampling {n:,} images")
            if self.candidates - start > MAX_CANDIDATES_PER_SAMPLE * max(n, 1):
                raise EvalError(f"DRS kept {n - len(open_):,} of {n:,} samples after {self.candidates - start:,} candidates; "
                                f"lower --drs or run without it")
            slots = open_[torch.arange(self.batch_size) % len(open_)]  # (B,) the request each candidate is for
            yb = y[slots] if y is not None else None
            x = self.candidates_for(yb, self.batch_size)
            d = self.calibrated(self.logits(x, yb))
            self.d_max = max(self.d_max, float(d.max()))
            keep = torch.rand(self.batch_size, generator=self.g) < acceptance(d, self.d_max, self.percentile)
            self.candidates += self.batch_size
            filled = torch.zeros(n, dtype=torch.bool)
            for j in torch.nonzero(keep).flatten().tolist():
                s = int(slots[j])
                if not filled[s]:
                    out[s], filled[s] = x[j], True
                    self.kept += 1
            open_ = open_[~filled[open_]]
        return out

    def images(self, y: Tensor | None, n: int | None = None) -> Tensor:
        """`draw` as [-1, 1] floats, the range G's own output has (for figures)."""
        return as_input(self.draw(y, n))

    def generate(self, n: int, seed: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(uint8 images, labels) batches of n kept samples with the labels of `metrics.eval_latents(seed)`:
        the same labels as an evaluation without DRS."""
        _, y = eval_latents(n, self.G.cfg.z_dim, self.G.cfg.num_classes, seed)
        c0, k0 = self.candidates, self.kept
        with Progress(f"DRS at the {self.percentile:g}th percentile: kept samples", n, "images") as p:
            for i in range(0, n, self.batch_size):
                yb = y[i:i + self.batch_size] if y is not None else None
                kept = self.draw(yb, min(self.batch_size, n - i))
                p.update(len(kept))
                yield kept, yb
        self.last = (self.candidates - c0, self.kept - k0)

    def summary(self) -> dict:
        """The last `generate`'s figures, for an evaluation's result: the percentile, the calibration and the
        share of candidates kept."""
        candidates, kept = self.last
        return {"drs": self.percentile, "drs_scale": self.scale, "drs_shift": self.shift,
                "drs_acceptance": kept / candidates if candidates else math.nan, "drs_candidates": candidates}
