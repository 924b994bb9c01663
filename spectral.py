"""Spectral normalisation with one power iteration per training step.

Implements Miyato et al., "Spectral Normalization for Generative Adversarial Networks" (ICLR 2018),
Algorithm 1, as the official SAGAN code uses it (brain-research/self-attention-gan, `ops.py`,
`spectral_normed_weight`): W_bar = W / sigma(W), where sigma is estimated with a persistent vector u
and one power iteration per update. In the official code the discriminator's u advances on the
real-image pass only (`update_collection="NO_OPS"` on the fake pass), so one discriminator update costs
one power iteration however many times D is evaluated.

Why this is not `torch.nn.utils.parametrizations.spectral_norm`: that parametrization runs its power
iteration inside every forward in training mode. A SAGAN iteration evaluates D three times (real
batch, fake batch, and again in the generator step), so it would take three iterations where the
reference takes one, and the count would change with the structure of the training loop. Here the
forward is pure: it divides W by sigma = u^T W v computed from the stored vectors and never writes a
buffer. `power_iteration(model)` advances u and v once, explicitly, and the trainer calls it once
per optimizer step of that model. Modules in eval mode are skipped, so sampling never moves u. A
forward with no buffer writes also suits torch.compile and DistributedDataParallel.

Layers are registered through `torch.nn.utils.parametrize`, so the raw weight lives at
`layer.parametrizations.weight.original`, and u and v are the buffers `_u` and `_v`, as in torch.

Deliberate deviations from the official code:
- u and v are constants for autograd, as in Miyato's Chainer code, torch, StudioGAN, MMGeneration and
  BigGAN-PyTorch. The TF code has no stop_gradient and back-propagates through them.
- u and v are warmed up with 15 power iterations when a layer is built, and again by `reset` after
  the weights are re-initialised (torch's convention). TF starts from a random u.
- The matrix is the weight with its output dimension first (dim 1 for transposed convolutions), as in
  torch. TF reshapes to [-1, out], the transpose of the same matrix, which has the same sigma.
- eps defaults to 1e-12 (TF, MMGeneration). StudioGAN uses 1e-6, BigGAN-PyTorch 1e-8.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

WARMUP_ITERS = 15


class SpectralNorm(nn.Module):
    """Parametrization W -> W / sigma(W), with u and v advanced only by `iterate`."""

    def __init__(self, weight: Tensor, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(f"spectral norm needs a weight with at least 2 dimensions, got shape {tuple(weight.shape)}")
        self.dim = dim
        self.eps = eps
        rows, cols = self._matrix(weight).shape
        self.register_buffer("_u", torch.zeros(rows, dtype=torch.float32, device=weight.device))
        self.register_buffer("_v", torch.zeros(cols, dtype=torch.float32, device=weight.device))
        self.reset(weight)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.flatten(1)  # (out, in * k * k)

    @torch.no_grad()
    def reset(self, weight: Tensor, n_iter: int = WARMUP_ITERS) -> None:
        """Draw fresh u, v and run `n_iter` power iterations (after the weight was re-initialised)."""
        self._u.copy_(F.normalize(torch.randn_like(self._u), dim=0, eps=self.eps))
        self._v.copy_(F.normalize(torch.randn_like(self._v), dim=0, eps=self.eps))
        self.iterate(weight, n_iter)

    @torch.no_grad()
    def iterate(self, weight: Tensor, n_iter: int = 1) -> None:
        """Advance u and v by `n_iter` power iterations on the current weight, in fp32."""
        mat = self._matrix(weight.detach().float())
        u, v = self._u.float(), self._v.float()
        for _ in range(n_iter):
            v = F.normalize(torch.mv(mat.t(), u), dim=0, eps=self.eps)
            u = F.normalize(torch.mv(mat, v), dim=0, eps=self.eps)
        self._u.copy_(u)
        self._v.copy_(v)

    def sigma(self, weight: Tensor) -> Tensor:
        """The current estimate u^T W v of the largest singular value (differentiable in W)."""
        with torch.autocast(device_type=weight.device.type, enabled=False):
            return torch.dot(self._u.float(), torch.mv(self._matrix(weight).float(), self._v.float()))

    def forward(self, weight: Tensor) -> Tensor:
        return weight / self.sigma(weight).clamp_min(self.eps).to(weight.dtype)


def spectral_norm(layer: nn.Module, eps: float = 1e-12, dim: int | None = None) -> nn.Module:
    """Spectrally normalise `layer.weight` (Conv, ConvTranspose, Linear, Embedding); returns the layer."""
    if dim is None:
        dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
    parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight, dim=dim, eps=eps))
    return layer


def sn_layers(model: nn.Module) -> Iterator[tuple[nn.Module, SpectralNorm]]:
    """Every (layer, parametrization) pair of spectrally normalised weights in `model`."""
    for layer in model.modules():
        if is_normalised(layer):
            for p in layer.parametrizations.weight:
                if isinstance(p, SpectralNorm):
                    yield layer, p


def is_normalised(layer: nn.Module) -> bool:
    """Whether `layer.weight` is spectrally normalised by this module."""
    return parametrize.is_parametrized(layer, "weight") and any(
        isinstance(p, SpectralNorm) for p in layer.parametrizations.weight
    )


def original_weight(layer: nn.Module) -> Tensor:
    """The trainable weight of `layer`: the raw one under spectral norm, else `layer.weight`."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


@torch.no_grad()
def power_iteration(model: nn.Module, n_iter: int = 1) -> int:
    """Advance u, v of every spectrally normalised layer of `model` that is in training mode.

    Call once per optimizer step of `model`, before its forward passes. Returns the number of layers
    advanced (0 in eval mode).
    """
    count = 0
    for layer, sn in sn_layers(model):
        if sn.training:
            sn.iterate(original_weight(layer), n_iter)
            count += 1
    return count


@torch.no_grad()
def reset(model: nn.Module, n_iter: int = WARMUP_ITERS) -> None:
    """Redraw and warm up u, v of every spectrally normalised layer (after weights are re-initialised)."""
    for layer, sn in sn_layers(model):
        sn.reset(original_weight(layer), n_iter)
