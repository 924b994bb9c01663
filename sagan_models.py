"""SAGAN generators and discriminators: ResNet (the paper's) and DCGAN (the older PyTorch port's).

Paper: Zhang, Goodfellow, Metaxas, Odena, "Self-Attention Generative Adversarial Networks",
ICML 2019, section 3, equations (1)-(3).

What each part matches:
- `SelfAttention(variant="official")`: the official code's `non_local.sn_non_local_block_sim`
  (brain-research/self-attention-gan), which StudioGAN's `ops.SelfAttention`, MMGeneration's
  `SelfAttentionBlock` and BigGAN-PyTorch's `layers.Attention` share. Its 1x1 convs are bias-free and
  spectrally normalised: query C->C/8, key C->C/8, value C->C/2, with 2x2 max-pooling of keys and
  values and an output conv C/2->C. It computes y = x + gamma * o, with no 1/sqrt(d) scaling and
  gamma starting at 0.
- `SelfAttention(variant="paper")`: the arXiv v1 text of eq. (1)-(3), as heykeetae/Self-Attention-GAN
  implements it. Its 1x1 convs have biases: query C->C/8, key C->C/8, value C->C. It has no pooling
  and no output conv.
- ResNet G and D: the official `generator_test` and `discriminator_test` at 128 px, and
  MMGeneration's `SNGANGenerator`/`ProjDiscriminator` (its "woReLUinplace" rows) at every size.
  StudioGAN's `src/models/resnet.py` is the same except for one detail of D: its `DiscBlock` applies
  an in-place ReLU to the block input, which the shortcut then reads, so its shortcut receives
  relu(x). That is `d_relu_shortcut=True` (also MMGeneration's "wReLUinplace" rows). Checkpoints of
  all three load exactly (`checkpoints.py`). One table per resolution below gives the channels
  (multiples of `conv_dim`) and where D downsamples. Class-conditional BN in G and a projection head in D (Miyato
  and Koyama 2018) are used when `num_classes > 0`.
- DCGAN G and D: heykeetae's `sagan_models.py` (conv-transpose G, LeakyReLU(0.1) D), generalised from
  64 px to 32-256 px. Channels at feature size r are conv_dim * imsize / (2r), so 64 px gives exactly
  heykeetae's 512-256-128-64.

The control block of the paper's Table 1 "residual" rows (`attn_block="residual"`, `ResidualControl`):
in place of each attention layer, y = x + gamma * conv(relu(conv(x))) with two bias-free SN 1x1
convs C -> 5C/8 -> C, gamma starting at 0. It has exactly the attention layer's parameters (1.25 C^2 + 1
for the official variant), so the comparison isolates attention from added capacity. The paper gives
no details of its residual block; this one is ours.

Span-masked ("non-local") attention, from zhengs81/SAGAN_PyTorch: with span s >= 1, each query
excludes every key within Chebyshev distance <= s of itself, a (2s+1)^2 square that includes the
query and is clipped at the border, before the softmax. s = 0 is plain SAGAN, with no mask at all.
- Pooled keys (official variant): a key cell max-pools a 2x2 block of pixels. The cell is excluded
  when any of its four pixels lies in the query's square. The max-pool may have taken its value from
  any of the four, so this is the only rule under which no feature from inside the square reaches
  the query.
- Fully masked queries: a query whose every key is excluded (small maps, large spans) gets an
  all-zero attention row. Its attention output is therefore 0 and the layer passes that position
  through unchanged (y = x there). It never becomes average pooling (the zhengs81 behaviour) and
  never NaN. A layer whose every query is fully masked is a configuration error (ValueError at build
  time).
- The mask is built once per (height, width, device, dtype) and cached on the module.

Attention backends (`set_attention_backend`, a runtime choice, not part of the model config):
- "sdpa" (default): `F.scaled_dot_product_attention` with scale 1 and the span mask as an additive
  attention mask. Its fused CPU and GPU kernels need equal query and value head sizes, so query and
  key (C/8 channels) are zero-padded to the value's size (C/2 official, C paper). Zeros add nothing
  to the dot products, so the result is the same attention, and no (N, M) matrix is kept for the
  backward pass. Fully masked rows are zeroed by multiplying the output by the row-keep vector,
  which is the same as zeroing their attention rows.
- "math": the explicit bmm-softmax-bmm of eq. (1)-(2), the reference that the tests compare against.
  It is also used whenever the attention map is requested (`return_attn=True`).
Under autocast the scores and the softmax are fp32 on both paths: the math path turns autocast off
for QK^T and the softmax (fp16 QK^T of large activations overflows to inf, then NaN), and the fused
kernels accumulate in fp32. On the CPU the fused kernel takes fp32 inputs under autocast too (in bf16 it
is about 2x slower there), and its output is cast back to the autocast dtype. Conditional BN casts its
fp32 class gains to the activation's dtype, so a block's output keeps the autocast dtype.

Deliberate deviations from the official code (docs/reproducing.md, "Differences from the references", lists
them too):
1. Conditional BN gain is parameterised as 1 + delta(y), as in StudioGAN and BigGAN-PyTorch. With the
   official ("xavier") init delta starts at 0, which equals the official gamma table starting at 1.
   The CBN tables are not spectrally normalised by default (official). `cbn_sn=True` gives
   StudioGAN's choice. The parameter count is the same either way.
2. BN uses batch statistics in training and running averages (PyTorch momentum 0.1) in eval mode. The
   official BN always uses batch statistics, with eps 1e-5 (our default). StudioGAN and MMGeneration
   use eps 1e-4 (MMGeneration's BigGAN-schedule config 1e-5).
3. The DCGAN model spectrally normalises every layer by default (`sn_layers="all"`), including the
   attention convs and the output layers that heykeetae leaves plain, as the paper applies SN to all
   layers of G and D. `sn_layers="port"` is heykeetae's placement (the up/down convs only) and
   `convt_sn_dim=0` its ConvTranspose matrix (in, out*k*k) instead of torch's (out, in*k*k); the
   presets that reproduce its runs use both, and its checkpoints then load unchanged. A conditional
   DCGAN (CBN in G, projection in D) is our extension, since heykeetae has none.
4. Attention placement at 128 px defaults to feat64 (StudioGAN, MMGeneration, BigGAN-PyTorch, the
   paper's headline 52.52/18.65 row). The official training script wires feat32: pass
   g_attn=(32,), d_attn=(32,) to get it.

An extension that no SAGAN reference has, off by default: `d_mbstd` (ResNet D only) appends ProGAN's
minibatch standard deviation (Karras et al. 2018, section 3; StyleGAN2's `MinibatchStdLayer` with one
feature map) before D's last block, whose input then has one more channel and, so, a 1x1 shortcut conv.

BigGAN's class conditioning in G (Brock et al. 2019, section 3 and appendix B; BigGAN-PyTorch's
`G_shared`, `shared_dim` and `hier`), also off by default and ResNet only:
- `g_shared_dim` > 0: one class embedding (B, g_shared_dim), shared by all blocks and not spectrally
  normalised, in place of SAGAN's per-BN class tables. Each conditional BN maps it to its gain and bias
  with bias-free linear layers, spectrally normalised when G is (`g_sn`), as BigGAN's `ccbn`.
- `g_hier`: z is split into equal chunks, one per G block plus one for the head, which then takes only
  its chunk. Each block's BNs receive [embedding, the block's chunk]. BigGAN rounds z_dim down to a
  multiple of the chunk count; we refuse a z_dim that does not divide instead, so z keeps the size asked.

`d_ac`, off by default and not in SAGAN: an auxiliary classifier head in D beside the projection, as
ACGAN's (Odena et al. 2017, Eq. 2-3): a spectrally normalised linear layer from D's pooled features
(B, C) to class logits (B, num_classes). The losses that use it are the trainer's (`--ac_weight`).
`d_tac` (with `d_ac`; not in SAGAN) adds TAC-GAN's twin head (Gong et al., NeurIPS 2019; StudioGAN's
`linear_mi`): a second spectrally normalised linear layer of the same shape, which the trainer fits to the
fakes' labels and G plays against.

`d_pack` > 1, off by default and not in SAGAN: PacGAN's packing (Lin et al., NeurIPS 2018, section 3). D
judges packs of `d_pack` images stacked on the channel axis (`pack_images`), so its first block takes
3 * d_pack channels and it gives one logit per pack. A conditional D's pack holds images of one label
(`pack_order`), which is that pack's label for the projection and the class heads: D sees two images of
one class side by side, and a pair of look-alikes is evidence of fakes. PacGAN packs unconditional
samples; packing by label is our reading of it for a class-conditional D.
"""

from __future__ import annotations

import copy

import contextlib
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

import spectral

ARCHS = ("resnet", "dcgan")
ATTN_VARIANTS = ("official", "paper")
ATTN_BACKENDS = ("sdpa", "math")
INITS = ("xavier", "ortho", "pytorch")
ATTN_BLOCKS = ("attention", "residual")  # what sits at the g_attn/d_attn resolutions (residual: Table 1's control)
SN_LAYERS = ("all", "port")  # DCGAN: SN on every layer (paper), or on the up/down convs only (heykeetae)
CONVT_SN_DIMS = (1, 0)  # ConvTranspose SN matrix: 1 = (out, in*k*k) (torch), 0 = (in, out*k*k) (heykeetae)

# ResNet generator: channel multiples of g_conv_dim at 4x4, then after each up-block (x2 each).
RESNET_G = {
    32: (4, 4, 4, 4),
    64: (16, 8, 4, 2, 1),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
}
# ResNet discriminator: (channel multiple of d_conv_dim, downsamples) per block; block 0 is the
# "optimized" first block.
RESNET_D = {
    32: ((2, True), (2, True), (2, False), (2, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, False)),
    128: ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)),
    256: ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)),
}
# Default attention feature resolutions (G, D) per image size. ResNet: StudioGAN/MMGeneration
# placements (32 px: 16/16, 64 px: 32/32, 128 px: feat64). 256 px: no reference trains SAGAN there;
# we keep 64, as at 128. DCGAN: heykeetae's rule, G at imsize/4 and imsize/2, D at 8 and 4, with G
# capped at 64 (an attention map at 128x128 is 16384 x 4096 entries, 256 MB per image in fp32).
DEFAULT_ATTN = {
    "resnet": {32: ((16,), (16,)), 64: ((32,), (32,)), 128: ((64,), (64,)), 256: ((64,), (64,))},
    "dcgan": {32: ((8, 16), (8, 4)), 64: ((16, 32), (8, 4)), 128: ((32, 64), (8, 4)), 256: ((32, 64), (8, 4))},
}
IMSIZES = tuple(sorted(RESNET_G))


@dataclass(frozen=True)
class ModelConfig:
    """Everything that determines the G and D layouts. It is stored in every checkpoint."""

    imsize: int = 64
    arch: str = "resnet"
    z_dim: int = 128
    g_conv_dim: int = 64
    d_conv_dim: int = 64
    num_classes: int = 0
    g_attn: tuple[int, ...] | None = None  # feature resolutions; None: per-size default; (): none
    d_attn: tuple[int, ...] | None = None
    attn_variant: str = "official"
    attn_block: str = "attention"  # "residual": a parameter-matched residual block instead (ResidualControl)
    span: int = 0
    g_sn: bool = True
    cbn_sn: bool = False
    sn_eps: float = 1e-12
    bn_eps: float = 1e-5
    init: str = "xavier"
    d_relu_shortcut: bool = False  # StudioGAN's D, MMGeneration's "inplace ReLU" rows: D's shortcut receives relu(x)
    sn_layers: str = "all"  # dcgan: "all" (the paper: every layer) or "port" (heykeetae: up/down convs only)
    convt_sn_dim: int = 1  # dcgan: the ConvTranspose SN matrix, 1 = (out, in*k*k) as torch, 0 = (in, out*k*k) as heykeetae
    d_mbstd: int = 0  # resnet: group size of a minibatch-std feature map before D's last block (MinibatchStd); 0: none
    g_shared_dim: int = 0  # resnet: a shared class embedding of this size that SN-linear layers map to each CBN (BigGAN); 0: tables
    g_hier: bool = False  # resnet, with g_shared_dim: z split into one chunk for the head and one per G block (BigGAN)
    d_ac: bool = False  # an auxiliary classifier head in D beside the projection (ACGAN): class logits (B, num_classes)
    d_tac: bool = False  # with d_ac: TAC-GAN's twin head, class logits of fakes (B, num_classes)
    d_pack: int = 1  # PacGAN: images per D input, stacked on channels (pack_images); 1: one image, as SAGAN

    def resolved(self) -> ModelConfig:
        """This config with the per-size default attention filled in and everything validated."""
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.imsize not in IMSIZES:
            raise ValueError(
                f"image size {self.imsize} is not supported; choose one of {', '.join(map(str, IMSIZES))}"
            )
        if self.attn_variant not in ATTN_VARIANTS:
            raise ValueError(f"unknown attention variant {self.attn_variant!r}; choose one of {', '.join(ATTN_VARIANTS)}")
        if self.attn_block not in ATTN_BLOCKS:
            raise ValueError(f"unknown attn_block {self.attn_block!r}; choose one of {', '.join(ATTN_BLOCKS)}")
        if self.attn_block == "residual" and (self.attn_variant != "official" or self.span):
            raise ValueError("attn_block residual matches the official attention layer's parameters; use it with "
                             "attn_variant official and span 0")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.sn_layers not in SN_LAYERS:
            raise ValueError(f"unknown sn_layers {self.sn_layers!r}; choose one of {', '.join(SN_LAYERS)}")
        if self.convt_sn_dim not in CONVT_SN_DIMS:
            raise ValueError(f"convt_sn_dim must be 1 (torch) or 0 (heykeetae), got {self.convt_sn_dim}")
        if self.arch != "dcgan" and (self.sn_layers != "all" or self.convt_sn_dim != 1):
            raise ValueError("sn_layers 'port' and convt_sn_dim 0 describe heykeetae's DCGAN layout; use them with arch dcgan")
        if self.d_mbstd < 0 or self.d_mbstd == 1:
            raise ValueError(f"d_mbstd is a group size of at least 2 (0: off), got {self.d_mbstd}")
        if self.d_mbstd and self.arch != "resnet":
            raise ValueError("d_mbstd adds a feature map before the ResNet D's last block; use it with arch resnet")
        if self.g_shared_dim < 0:
            raise ValueError(f"g_shared_dim must be >= 0 (0: per-class tables in every CBN), got {self.g_shared_dim}")
        if self.g_shared_dim and (self.arch != "resnet" or self.num_classes < 1):
            raise ValueError("g_shared_dim embeds class labels for the ResNet G's conditional BN; use it with arch resnet "
                             "and a labelled dataset")
        if self.g_shared_dim and self.cbn_sn:
            raise ValueError("cbn_sn normalises the per-class CBN tables; with g_shared_dim the CBN projections follow "
                             "g_sn, as in BigGAN: drop one of the two")
        if self.g_hier and not self.g_shared_dim:
            raise ValueError("g_hier appends a chunk of z to the shared class embedding; set g_shared_dim as well")
        if self.d_ac and self.num_classes < 1:
            raise ValueError("d_ac classifies images into the dataset's classes; use it with a labelled dataset")
        if self.d_tac and not self.d_ac:
            raise ValueError("d_tac is the twin of D's auxiliary classifier head; set d_ac as well")
        if self.d_pack < 1:
            raise ValueError(f"d_pack is the number of images D judges together, at least 1 (1: one, as SAGAN), got {self.d_pack}")
        if self.span < 0:
            raise ValueError(f"span must be >= 0 (0 = plain SAGAN), got {self.span}")
        for name in ("z_dim", "g_conv_dim", "d_conv_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.g_hier and self.z_dim % z_slots(self):
            raise ValueError(f"g_hier splits z into {z_slots(self)} equal chunks (the head and each G block) at "
                             f"{self.imsize} px; z_dim {self.z_dim} is not divisible by {z_slots(self)}")
        g_def, d_def = DEFAULT_ATTN[self.arch][self.imsize]
        g_attn = g_def if self.g_attn is None else self.g_attn
        d_attn = d_def if self.d_attn is None else self.d_attn
        cfg = replace(self, g_attn=tuple(sorted(set(g_attn))), d_attn=tuple(sorted(set(d_attn))))
        for net, attn, chans in (("generator", cfg.g_attn, g_channels(cfg)), ("discriminator", cfg.d_attn, d_channels(cfg))):
            for r in attn:
                if r not in chans:
                    raise ValueError(
                        f"{net} attention at {r}x{r} is impossible for {cfg.arch} {cfg.imsize} px; "
                        f"valid feature resolutions: {', '.join(map(str, sorted(chans)))}"
                    )
                if chans[r] % 8:
                    raise ValueError(
                        f"{net} attention at {r}x{r} needs a channel count divisible by 8, got {chans[r]}; raise the conv_dim"
                    )
                if cfg.span and _span_mask(r, r, cfg.span, cfg.attn_variant == "official")[1].all():
                    raise ValueError(
                        f"span {cfg.span} excludes every key of every query in the {net}'s attention at {r}x{r}; "
                        f"use a smaller span or place attention at a larger resolution"
                    )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        for k in ("g_attn", "d_attn"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def z_slots(cfg: ModelConfig) -> int:
    """How many chunks z is split into with g_hier: one for the head, one per ResNet G block."""
    return len(RESNET_G[cfg.imsize]) if cfg.g_hier else 1


def g_channels(cfg: ModelConfig) -> dict[int, int]:
    """Generator feature resolution -> channels, for every place attention may go."""
    if cfg.arch == "resnet":
        mults = RESNET_G[cfg.imsize]
        return {4 * 2**i: m * cfg.g_conv_dim for i, m in enumerate(mults) if i > 0}
    return {r: _dcgan_ch(cfg.g_conv_dim, cfg.imsize, r) for r in _pow2(4, cfg.imsize // 2)}


def d_channels(cfg: ModelConfig) -> dict[int, int]:
    """Discriminator feature resolution -> channels, after the first block that reaches it."""
    if cfg.arch == "resnet":
        out: dict[int, int] = {}
        res = cfg.imsize
        for mult, down in RESNET_D[cfg.imsize]:
            res //= 2 if down else 1
            out.setdefault(res, mult * cfg.d_conv_dim)
        return out
    return {r: _dcgan_ch(cfg.d_conv_dim, cfg.imsize, r) for r in _pow2(4, cfg.imsize // 2)}


def _pow2(lo: int, hi: int) -> list[int]:
    return [2**k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]


def _dcgan_ch(conv_dim: int, imsize: int, res: int) -> int:
    return conv_dim * imsize // (2 * res)


# ----------------------------------------------------------------------------------------------
# Layers


def _sn(layer: nn.Module, on: bool, eps: float, dim: int | None = None) -> nn.Module:
    return spectral.spectral_norm(layer, eps=eps, dim=dim) if on else layer


def conv(cin: int, cout: int, k: int, sn: bool, eps: float, bias: bool = True) -> nn.Module:
    """k x k convolution, stride 1, 'same' padding, optionally spectrally normalised."""
    return _sn(nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias), sn, eps)


class CondBatchNorm2d(nn.Module):
    """BatchNorm whose gain 1 + delta(y) and bias beta(y) are per-class tables; plain affine BN if no classes.

    With `cond_dim` > 0, y is a (B, cond_dim) vector (a shared class embedding, and with hierarchical z a
    chunk of z) and delta, beta are bias-free linear maps of it, BigGAN-PyTorch's `layers.ccbn`."""

    def __init__(self, channels: int, num_classes: int, eps: float, sn: bool = False, sn_eps: float = 1e-12,
                 cond_dim: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=num_classes == 0)
        if num_classes > 0:
            def table() -> nn.Module:
                return nn.Linear(cond_dim, channels, bias=False) if cond_dim else nn.Embedding(num_classes, channels)
            self.gain = _sn(table(), sn, sn_eps)
            self.bias = _sn(table(), sn, sn_eps)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = self.bn(x)
        if self.num_classes == 0:
            return h
        gain = 1 + self.gain(y)[:, :, None, None]  # (B, C, 1, 1); fp32 tables, or autocast's dtype for linears
        # in the activation's dtype: under autocast, fp32 gains would promote this block to fp32
        return h * gain.to(h.dtype) + self.bias(y)[:, :, None, None].to(h.dtype)


def _span_mask(h: int, w: int, span: int, pooled: bool, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(excluded (N, M) bool, fully_masked (N,) bool) for queries on an h x w grid.

    Keys are pixels, or 2x2 cells when `pooled`. A key is excluded when some pixel it covers lies
    within Chebyshev distance `span` of the query.
    """
    qi = torch.arange(h, device=device)
    qj = torch.arange(w, device=device)
    step = 2 if pooled else 1
    lo_i = torch.arange(0, h - step + 1, step, device=device)  # first pixel row of each key
    lo_j = torch.arange(0, w - step + 1, step, device=device)
    hi_i, hi_j = lo_i + step - 1, lo_j + step - 1

    def dist(q: Tensor, lo: Tensor, hi: Tensor) -> Tensor:  # (len(q), len(lo)): gap from q to [lo, hi]
        return (lo[None] - q[:, None]).clamp(min=0) + (q[:, None] - hi[None]).clamp(min=0)

    di = dist(qi, lo_i, hi_i)  # (h, h')
    dj = dist(qj, lo_j, hi_j)  # (w, w')
    cheb = torch.maximum(di[:, None, :, None], dj[None, :, None, :])  # (h, w, h', w')
    excluded = (cheb <= span).reshape(h * w, len(lo_i) * len(lo_j))  # (N, M)
    return excluded, excluded.all(dim=1)


class SelfAttention(nn.Module):
    """SAGAN self-attention, y = x + gamma * o (paper eq. 3), with an optional span mask."""

    def __init__(
        self, channels: int, variant: str = "official", span: int = 0, sn: bool = True, sn_eps: float = 1e-12
    ) -> None:
        super().__init__()
        if variant not in ATTN_VARIANTS:
            raise ValueError(f"unknown attention variant {variant!r}; choose one of {', '.join(ATTN_VARIANTS)}")
        if channels % 8:
            raise ValueError(f"attention needs a channel count divisible by 8, got {channels}")
        self.variant = variant
        self.span = span
        self.pooled = variant == "official"
        ck = channels // 8
        if variant == "official":
            cv = channels // 2
            self.query = conv(channels, ck, 1, sn, sn_eps, bias=False)
            self.key = conv(channels, ck, 1, sn, sn_eps, bias=False)
            self.value = conv(channels, cv, 1, sn, sn_eps, bias=False)
            self.out = conv(cv, channels, 1, sn, sn_eps, bias=False)
        else:
            self.query = conv(channels, ck, 1, sn, sn_eps)
            self.key = conv(channels, ck, 1, sn, sn_eps)
            self.value = conv(channels, channels, 1, sn, sn_eps)
            self.out = None
        self.gamma = nn.Parameter(torch.zeros(()))
        self.backend = "sdpa"
        self._masks: dict[tuple, tuple[Tensor, Tensor]] = {}

    def mask(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(additive bias (N, M), row keep (N, 1)) for the span mask, built once per shape/device/dtype."""
        key = (h, w, device, dtype)
        if key not in self._masks:
            excluded, full = _span_mask(h, w, self.span, self.pooled, device)
            excluded = excluded & ~full[:, None]  # fully masked rows: softmax unmasked, then zeroed
            bias = torch.zeros(excluded.shape, device=device, dtype=dtype).masked_fill(excluded, float("-inf"))
            keep = (~full).to(dtype)[:, None]
            self._masks[key] = (bias, keep)
        return self._masks[key]

    def forward(self, x: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, C/8, N)
        k = self.key(x)  # (B, C/8, H, W)
        v = self.value(x)  # (B, Cv, H, W)
        if self.pooled:
            k = F.max_pool2d(k, 2)  # (B, C/8, H/2, W/2)
            v = F.max_pool2d(v, 2)
        k = k.flatten(2)  # (B, C/8, M)
        v = v.flatten(2)  # (B, Cv, M)
        attn = None
        if self.backend == "sdpa" and not return_attn:
            cv = v.shape[1]
            # The CPU fused kernel is about 2x slower in bf16 than in fp32, forward and backward (BENCHMARKS.md,
            # "bf16 on the CPU"): on the CPU it always runs in fp32, its output cast back.
            dtype = torch.float32 if x.device.type == "cpu" else q.dtype
            qp = F.pad(q.transpose(1, 2).to(dtype), (0, cv - q.shape[1]))[:, None]  # (B, 1, N, Cv), zero-padded
            kp = F.pad(k.transpose(1, 2).to(dtype), (0, cv - k.shape[1]))[:, None]  # (B, 1, M, Cv)
            mask = keep = None
            if self.span:
                mask, keep = self.mask(h, w, x.device, dtype)
            vt = v.transpose(1, 2).to(dtype).contiguous()[:, None]  # (B, 1, M, Cv); fused kernels need a unit last stride
            with torch.autocast(x.device.type, enabled=False):  # CPU autocast would cast the inputs to bf16 again
                o = F.scaled_dot_product_attention(qp, kp, vt, attn_mask=mask, scale=1.0)[:, 0]  # (B, N, Cv)
            if keep is not None:
                o = o * keep
            o = o.transpose(1, 2).reshape(b, -1, h, w).to(v.dtype)  # (B, Cv, H, W)
        else:
            # Scores and softmax in fp32 whatever autocast says: QK^T of large fp16 activations overflows to
            # inf, and the softmax then gives NaN (the fused kernels accumulate in fp32 themselves).
            with torch.autocast(x.device.type, enabled=False):
                energy = torch.bmm(q.transpose(1, 2).float(), k.float())  # (B, N, M), no 1/sqrt(d)
                if self.span:
                    bias, keep = self.mask(h, w, x.device, energy.dtype)
                    attn = F.softmax(energy + bias, dim=-1) * keep  # (B, N, M)
                else:
                    attn = F.softmax(energy, dim=-1)  # (B, N, M): softmax over keys
            o = torch.bmm(v, attn.transpose(1, 2).to(v.dtype)).view(b, -1, h, w)  # (B, Cv, H, W)
        if self.out is not None:
            o = self.out(o)  # (B, C, H, W)
        y = x + self.gamma * o
        return (y, attn) if return_attn else y


class ResidualControl(nn.Module):
    """y = x + gamma * conv2(relu(conv1(x))): 1x1 convs C -> 5C/8 -> C, bias-free, SN, gamma from 0.
    The paper's Table 1 "residual" control, with exactly the official attention layer's parameters."""

    def __init__(self, channels: int, sn: bool = True, sn_eps: float = 1e-12) -> None:
        super().__init__()
        if channels % 8:
            raise ValueError(f"the residual control block needs a channel count divisible by 8, got {channels}")
        hidden = 5 * channels // 8  # 2 * C * 5C/8 = 1.25 C^2, the attention layer's C^2/8 + C^2/8 + C^2/2 + C^2/2
        self.conv1 = conv(channels, hidden, 1, sn, sn_eps, bias=False)
        self.conv2 = conv(hidden, channels, 1, sn, sn_eps, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.conv2(F.relu(self.conv1(x)))  # (B, C, H, W)


def attention_block(ch: int, cfg: ModelConfig, sn: bool) -> nn.Module:
    """What goes at an attention resolution: SAGAN attention, or the parameter-matched residual control."""
    if cfg.attn_block == "residual":
        return ResidualControl(ch, sn, cfg.sn_eps)
    return SelfAttention(ch, cfg.attn_variant, cfg.span, sn, cfg.sn_eps)


# ----------------------------------------------------------------------------------------------
# ResNet blocks (official generator_test, discriminator_test; MMGeneration; StudioGAN with relu_shortcut)


class GBlock(nn.Module):
    """CBN-ReLU-up2-conv3-CBN-ReLU-conv3, shortcut up2-conv1."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig) -> None:
        super().__init__()
        sn, eps = cfg.g_sn, cfg.sn_eps
        cond_dim = cfg.g_shared_dim + (cfg.z_dim // z_slots(cfg) if cfg.g_hier else 0)
        cbn_sn = sn if cond_dim else cfg.cbn_sn  # BigGAN: the CBN projections of a shared embedding are G's SN linears
        self.bn1 = CondBatchNorm2d(cin, cfg.num_classes, cfg.bn_eps, cbn_sn, eps, cond_dim)
        self.conv1 = conv(cin, cout, 3, sn, eps)
        self.bn2 = CondBatchNorm2d(cout, cfg.num_classes, cfg.bn_eps, cbn_sn, eps, cond_dim)
        self.conv2 = conv(cout, cout, 3, sn, eps)
        self.shortcut = conv(cin, cout, 1, sn, eps)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")  # (B, Cin, 2H, 2W)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))  # (B, Cout, 2H, 2W)
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """ReLU-conv3-ReLU-conv3-[avgpool]; the first ("optimized") block is conv3-ReLU-conv3-avgpool.

    Shortcut: conv1-[avgpool] when the block downsamples or changes channels, else identity; the
    optimized block pools before its conv1.
    """

    def __init__(self, cin: int, cout: int, down: bool, first: bool, eps: float, relu_shortcut: bool = False) -> None:
        super().__init__()
        self.down, self.first, self.relu_shortcut = down, first, relu_shortcut
        self.conv1 = conv(cin, cout, 3, True, eps)
        self.conv2 = conv(cout, cout, 3, True, eps)
        self.shortcut = conv(cin, cout, 1, True, eps) if (first or down or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = F.relu(x) if self.relu_shortcut else x  # relu_shortcut: StudioGAN's in-place ReLU (MMGeneration's "wReLUinplace")
        if self.shortcut is not None:
            s = self.shortcut(s)
            if self.down:
                s = F.avg_pool2d(s, 2)
        return h + s


class MinibatchStd(nn.Module):
    """Karras et al. 2018 (ProGAN, section 3), as StyleGAN2's `MinibatchStdLayer` with one feature map.

    The batch splits into groups of `group` images (image i belongs to group i % (B / group)); within each
    group, the standard deviation of every feature over the group's images, averaged over features and
    positions, is one number. It is appended to each of the group's images as a constant channel, so D
    can tell a batch of look-alikes from a varied one. A batch that `group` does not divide uses its
    largest divisor smaller than `group`.
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        g = max(d for d in range(1, min(self.group, B) + 1) if B % d == 0)
        y = x.float().reshape(g, B // g, C, H, W)  # (g, M, C, H, W)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (M,)
        y = y.repeat(g).reshape(B, 1, 1, 1).expand(B, 1, H, W)  # (B, 1, H, W): image i gets y[i % M]
        return torch.cat([x, y.to(x.dtype)], dim=1)  # (B, C+1, H, W)


# ----------------------------------------------------------------------------------------------
# DCGAN layers (heykeetae sagan_models.py)


class UpConv(nn.Module):
    """SN-ConvTranspose (x2, or 1x1 -> 4x4 for the head) - (C)BN - ReLU."""

    def __init__(self, cin: int, cout: int, head: bool, cfg: ModelConfig) -> None:
        super().__init__()
        layer = nn.ConvTranspose2d(cin, cout, 4) if head else nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.conv = _sn(layer, cfg.g_sn, cfg.sn_eps, cfg.convt_sn_dim)
        self.bn = CondBatchNorm2d(cout, cfg.num_classes, cfg.bn_eps, cfg.cbn_sn, cfg.sn_eps)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        return F.relu(self.bn(self.conv(x), y))


class DownConv(nn.Module):
    """SN-Conv 4x4 stride 2 - LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, eps: float) -> None:
        super().__init__()
        self.conv = _sn(nn.Conv2d(cin, cout, 4, 2, 1), True, eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv(x), 0.1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with `model` in eval mode (BN running statistics, no SN update); restore its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sample(G: nn.Module, z: Tensor, y: Tensor | None = None, batch_size: int = 64) -> Tensor:
    """G(z, y) in eval mode, `batch_size` rows at a time: (B, 3, imsize, imsize) in [-1, 1]."""
    zs = z.split(batch_size)
    ys = y.split(batch_size) if y is not None else [None] * len(zs)
    with eval_mode(G):
        return torch.cat([G(zb, yb) for zb, yb in zip(zs, ys)])


def truncate_latents(z: Tensor, truncation: float) -> Tensor:
    """BigGAN's truncation trick (Brock et al. 2019, section 3.1): each coordinate of z ~ N(0, 1) mapped onto
    N(0, 1) truncated to [-t, t] by the monotone map ndtri(Phi(-t) + (1 - 2 Phi(-t)) ndtr(z)), computed in
    float64. BigGAN resamples the values outside [-t, t] instead; both give the truncated normal, but the map
    keeps every sample's draw (and label), so a grid or an evaluation with and without truncation pairs up
    sample by sample. t = 0 returns z itself (no truncation)."""
    if truncation < 0:
        raise ValueError(f"truncation must be >= 0 (0: off), got {truncation}")
    if truncation == 0:
        return z
    low = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))
    u = low + (1 - 2 * low) * torch.special.ndtr(z.double())  # uniform on (Phi(-t), Phi(t))
    return torch.special.ndtri(u).clamp_(-truncation, truncation).to(z.dtype)


def draw_latents(n: int, z_dim: int, generator: torch.Generator, truncation: float = 0.0) -> Tensor:
    """n latents (n, z_dim) on the CPU from `generator`: N(0, I), or truncated by `truncate_latents`. The same
    draws from the generator either way, so what it yields next (labels) does not depend on the truncation."""
    return truncate_latents(torch.randn(n, z_dim, generator=generator), truncation)


@torch.no_grad()
def standing_stats(G: nn.Module, batches: int, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A copy of G whose batch-norm running statistics are recomputed ("standing statistics",
    BigGAN-PyTorch `utils.accumulate_standing_stats`): the plain average over `batches` training-mode
    forward passes of `batch_size` z ~ N(0, I) and uniform labels (a private seed), in place of the
    running averages that training left, which for an EMA generator are averages over other weights.
    The forward passes move no spectral-norm vector (spectral.py's forward is pure). G is untouched."""
    G2 = copy.deepcopy(G)
    bns = [m for m in G2.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches < 1:
        return G2.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    g = torch.Generator().manual_seed(seed)
    device = next(G2.parameters()).device
    G2.train()
    for _ in range(batches):
        z = torch.randn(batch_size, G2.cfg.z_dim, generator=g).to(device)
        y = torch.randint(0, G2.cfg.num_classes, (batch_size,), generator=g).to(device) if G2.cfg.num_classes else None
        G2(z, y)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    G2.standing_stats = batches  # evaluations read it from here, so their record is this G's own (metrics.metric_tag)
    return G2.eval()


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Use `backend` ("sdpa" or "math") in every attention layer of `model`."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTN_BACKENDS)}")
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.backend = backend


# ----------------------------------------------------------------------------------------------
# Networks


COND_BLOCKS = (GBlock, UpConv)  # the blocks that take a label (or its embedding); one entry of `ys` each


def _run(blocks: nn.ModuleList, h: Tensor, ys: Sequence[Tensor | None] | None, attn_maps: list[Tensor] | None) -> Tensor:
    """Apply blocks and attention layers in order, collecting attention maps when asked. `ys`: what each
    conditional block (COND_BLOCKS) receives, one entry per such block in order; None in D."""
    k = 0
    for block in blocks:
        if isinstance(block, SelfAttention):
            if attn_maps is None:
                h = block(h)
            else:
                h, a = block(h, return_attn=True)
                attn_maps.append(a)
        elif isinstance(block, COND_BLOCKS):
            h = block(h, ys[k])
            k += 1
        else:
            h = block(h)
    return h


def pack_order(y: Tensor, m: int) -> Tensor:
    """Indices (n,) that arrange a labelled batch into consecutive packs of m images of one label (PacGAN by
    class). A label with c images gives c // m packs; its other c % m images are left out."""
    order = torch.argsort(y, stable=True)  # (B,): labels ascending
    ys = y[order]
    counts = torch.bincount(ys)  # (K',)
    rank = torch.arange(len(y), device=y.device) - (torch.cumsum(counts, 0) - counts)[ys]  # place within its label
    return order[rank < (counts // m * m)[ys]]


def pack_images(x: Tensor, m: int) -> Tensor:
    """PacGAN's D input: each m consecutive images stacked on channels, (B, C, H, W) -> (B/m, m*C, H, W)."""
    B, C, H, W = x.shape
    return x.reshape(B // m, m * C, H, W)


def _check_labels(num_classes: int, y: Tensor | None, batch: int) -> None:
    if num_classes > 0 and y is None:
        raise ValueError(f"this model is class-conditional ({num_classes} classes): pass labels y")
    if num_classes > 0 and y is not None and y.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")


class Generator(nn.Module):
    """G(z, y) -> images in [-1, 1], (B, 3, imsize, imsize)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        sn, eps = cfg.g_sn, cfg.sn_eps
        edge_sn = sn and cfg.sn_layers == "all"  # attention convs and the output layer (plain in heykeetae)
        self.blocks = nn.ModuleList()
        attn = set(cfg.g_attn)

        def add_attn(res: int, ch: int) -> None:
            if res in attn:
                self.blocks.append(attention_block(ch, cfg, edge_sn))

        if cfg.arch == "resnet":
            chans = [m * cfg.g_conv_dim for m in RESNET_G[cfg.imsize]]
            if cfg.g_shared_dim:
                self.shared = nn.Embedding(cfg.num_classes, cfg.g_shared_dim)  # no SN, as BigGAN's G.shared
            self.head = _sn(nn.Linear(cfg.z_dim // z_slots(cfg), chans[0] * 16), sn, eps)
            for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:]), start=1):
                self.blocks.append(GBlock(cin, cout, cfg))
                add_attn(4 * 2**i, cout)
            self.bn_out = nn.BatchNorm2d(chans[-1], eps=cfg.bn_eps)
            self.conv_out = conv(chans[-1], 3, 3, sn, eps)
        else:
            ch = {r: _dcgan_ch(cfg.g_conv_dim, cfg.imsize, r) for r in _pow2(4, cfg.imsize // 2)}
            self.blocks.append(UpConv(cfg.z_dim, ch[4], True, cfg))
            add_attn(4, ch[4])
            for r in _pow2(8, cfg.imsize // 2):
                self.blocks.append(UpConv(ch[r // 2], ch[r], False, cfg))
                add_attn(r, ch[r])
            self.conv_out = _sn(nn.ConvTranspose2d(ch[cfg.imsize // 2], 3, 4, 2, 1), edge_sn, eps, cfg.convt_sn_dim)
        self.n_cond = sum(isinstance(b, COND_BLOCKS) for b in self.blocks)
        init_weights(self, cfg.init)

    def forward(self, z: Tensor, y: Tensor | None = None, return_attn: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        _check_labels(self.cfg.num_classes, y, z.shape[0])
        maps: list[Tensor] | None = [] if return_attn else None
        if self.cfg.arch == "resnet":
            zs = z.chunk(z_slots(self.cfg), dim=1)  # (B, z_dim / slots) each; one chunk without g_hier
            if self.cfg.g_shared_dim:
                e = self.shared(y)  # (B, shared_dim)
                ys = [torch.cat([e, zk], dim=1) for zk in zs[1:]] if self.cfg.g_hier else [e] * self.n_cond
            else:
                ys = [y] * self.n_cond
            h = self.head(zs[0]).view(z.shape[0], -1, 4, 4)  # (B, C0, 4, 4)
            h = _run(self.blocks, h, ys, maps)  # (B, C, imsize, imsize)
            h = self.conv_out(F.relu(self.bn_out(h)))
        else:
            h = _run(self.blocks, z[:, :, None, None], [y] * self.n_cond, maps)  # (B, C, imsize/2, imsize/2)
            h = self.conv_out(h)
        img = torch.tanh(h)  # (B, 3, imsize, imsize)
        return (img, maps) if return_attn else img

    @torch.no_grad()
    def generate(self, n: int, labels: int | Sequence[int] | Tensor | None = None, seed: int = 0,
                 value_range: tuple[float, float] = (0.0, 1.0), truncation: float = 0.0) -> Tensor:
        """n images (n, 3, imsize, imsize) in `value_range` ((0, 1), or (-1, 1) as G draws them), drawn in eval
        mode from z ~ N(0, I) of a CPU generator seeded with `seed` (the same images on every device), truncated
        to [-truncation, truncation] when that is > 0 (`truncate_latents`). `labels`: None (uniform over the
        classes, from the same seed, for a conditional G), one class for all, or one per image."""
        g = torch.Generator().manual_seed(seed)
        z = draw_latents(n, self.cfg.z_dim, g, truncation)
        y = None
        if self.cfg.num_classes:
            y = (torch.randint(0, self.cfg.num_classes, (n,), generator=g) if labels is None else
                 torch.as_tensor(labels, dtype=torch.long).expand(n) if torch.as_tensor(labels).ndim == 0 else
                 torch.as_tensor(labels, dtype=torch.long))
        elif labels is not None:
            raise ValueError("this generator is unconditional: pass labels=None")
        device = next(self.parameters()).device
        img = sample(self, z.to(device), y.to(device) if y is not None else None)
        low, high = value_range
        return (img + 1) * (high - low) / 2 + low


class Discriminator(nn.Module):
    """D(x, y) -> one logit per image, (B,); projection term <embed(y), h> when conditional."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        eps = cfg.sn_eps
        edge_sn = cfg.sn_layers == "all"  # attention convs and the output layer (plain in heykeetae)
        self.blocks = nn.ModuleList()
        pending = set(cfg.d_attn)

        def add_attn(res: int, ch: int) -> None:
            if res in pending:  # after the first block reaching this resolution
                pending.discard(res)
                self.blocks.append(attention_block(ch, cfg, edge_sn))

        res, cin = cfg.imsize, 3 * cfg.d_pack
        if cfg.arch == "resnet":
            table = RESNET_D[cfg.imsize]
            for i, (mult, down) in enumerate(table):
                cout = mult * cfg.d_conv_dim
                if cfg.d_mbstd and i == len(table) - 1:
                    self.blocks.append(MinibatchStd(cfg.d_mbstd))
                    cin += 1
                self.blocks.append(DBlock(cin, cout, down, i == 0, eps, cfg.d_relu_shortcut))
                res //= 2 if down else 1
                add_attn(res, cout)
                cin = cout
            self.head = _sn(nn.Linear(cin, 1), True, eps)
        else:
            for r in _pow2(4, cfg.imsize // 2)[::-1]:
                cout = _dcgan_ch(cfg.d_conv_dim, cfg.imsize, r)
                self.blocks.append(DownConv(cin, cout, eps))
                add_attn(r, cout)
                cin = cout
            self.head = _sn(nn.Conv2d(cin, 1, 4), edge_sn, eps)
        if cfg.num_classes > 0:
            self.embed = _sn(nn.Embedding(cfg.num_classes, cin), True, eps)
        if cfg.d_ac:
            self.ac = _sn(nn.Linear(cin, cfg.num_classes), True, eps)
        if cfg.d_tac:
            self.twin = _sn(nn.Linear(cin, cfg.num_classes), True, eps)
        init_weights(self, cfg.init)

    def forward(self, x: Tensor, y: Tensor | None = None, return_attn: bool = False,
                return_cls: bool = False, return_features: bool = False,
                return_twin: bool = False) -> Tensor | tuple[Tensor, ...]:
        """The logits (B,); return_cls (d_ac) appends the auxiliary class logits (B, num_classes), then
        return_twin (d_tac) the twin head's (B, num_classes), then return_features the pooled features h
        (B, C), then return_attn the attention maps."""
        _check_labels(self.cfg.num_classes, y, x.shape[0])
        if x.shape[1] != 3 * self.cfg.d_pack:
            raise ValueError(f"this D judges packs of {self.cfg.d_pack} RGB images stacked on channels (d_pack; "
                             f"pack_images), so it takes {3 * self.cfg.d_pack} channels, got {x.shape[1]}")
        if return_cls and not self.cfg.d_ac:
            raise ValueError("return_cls needs the auxiliary classifier head: build D with d_ac")
        if return_twin and not self.cfg.d_tac:
            raise ValueError("return_twin needs TAC-GAN's twin head: build D with d_tac")
        maps: list[Tensor] | None = [] if return_attn else None
        h = _run(self.blocks, x, None, maps)  # (B, C, 4, 4)
        if self.cfg.arch == "resnet":
            h = F.relu(h).sum(dim=(2, 3))  # (B, C): global sum pool
            out = self.head(h).squeeze(1)  # (B,)
        else:
            out = self.head(h).flatten()  # (B,)
            h = h.sum(dim=(2, 3))  # (B, C) for the projection
        if self.cfg.num_classes > 0:
            out = out + (self.embed(y) * h).sum(dim=1)
        extra = ([self.ac(h)] if return_cls else []) + ([self.twin(h)] if return_twin else [])  # (B, num_classes) each
        extra += ([h] if return_features else []) + ([maps] if return_attn else [])  # (B, C); maps
        return (out, *extra) if extra else out


# ----------------------------------------------------------------------------------------------
# Initialisation


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str) -> None:
    """Initialise conv/linear/embedding weights, then re-warm the spectral-norm vectors.

    - "xavier": the official code (Xavier/Glorot uniform weights, zero biases; CBN tables start at
      gain 1, bias 0; the projection embedding is Xavier too, as in `ops.sn_embedding`).
    - "ortho": StudioGAN `ops.init_weights` (orthogonal weights and embeddings, zero biases; CBN tables
      orthogonal as well).
    - "pytorch": PyTorch's defaults (heykeetae's port); CBN tables start at gain 1, bias 0.
    Spectrally normalised CBN tables (`cbn_sn=True`) get the scheme's weight init instead of zeros,
    since W / sigma(W) is undefined at W = 0.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")
    cbn_tables = {id(t) for m in model.modules() if isinstance(m, CondBatchNorm2d) and m.num_classes for t in (m.gain, m.bias)}
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            continue
        w = spectral.original_weight(m)
        if id(m) in cbn_tables and scheme != "ortho" and not spectral.is_normalised(m):
            w.zero_()  # gain 1 + 0, bias 0; a spectrally normalised table cannot start at 0 (sigma = 0)
            continue
        if scheme == "xavier":
            init.xavier_uniform_(w)
        elif scheme == "ortho":
            init.orthogonal_(w)
        if scheme != "pytorch" and getattr(m, "bias", None) is not None:
            m.bias.zero_()
    spectral.reset(model)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
