"""Training loop: losses, TTUR optimisation, samples, TensorBoard, checkpoints and resume.

One iteration (= one "step", counted in generator updates as in the paper and the official code) is
`n_dis` discriminator updates followed by one generator update:
- D update: a real batch; fakes from G under no_grad (detached, so G's backward never runs in the D
  step, unlike heykeetae #48); one spectral-norm power iteration for D; loss = d_loss(D(x, y), D(G(z), y_fake))
  (+ lambda_gp * gradient penalty for WGAN-GP, in the same step and the same optimizer update).
- G update: one power iteration for G; loss = g_loss(D(G(z), y_fake)); D's parameters are frozen.
Fake labels are drawn uniformly. Losses are small pure functions below (hinge is the paper's).

Scale (`--accum K`, torchrun, `--ema`): each optimizer step sums K micro-batches of `--batch_size`
(losses divided by K; under DDP the gradient all-reduce runs only on the last micro-batch), so the
global batch is batch_size x K x WORLD_SIZE. Batch norm in G sees micro-batches, not the global batch
(as in BigGAN-PyTorch's accumulation), unless `--sync_bn` (CUDA only) joins the processes' statistics.
The EMA generator follows BigGAN-PyTorch's `utils.ema`: every floating-point entry of G's state dict
(weights, batch-norm running statistics, spectral-norm u and v) is averaged after each G step with
`--ema_decay`, and copied outright before `--ema_start`.

Checkpoints (format, atomic writes, loading, `latest`, pruning) live in `checkpoints.py`; the trainer
decides what goes in them (`state()`) and when they are written.

Exit codes of `main.py`: 0 done; 2 an error explained on one line; 3 stopped by SIGTERM/SIGINT after
saving a checkpoint at the current step (resume with `--pretrained_model latest`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import signal
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

import distributed
import progress
import spectral
from checkpoints import (CHECKPOINT_FORMAT, CheckpointError, check_same_model, checkpoint_path, load_checkpoint, prune, why_not_written,
                         write_checkpoint)
from durable import write_durably, write_json, write_text
from data_loader import check_bad_files
from distributed import DistEnv
from progress import duration
from sagan_models import (Discriminator, Generator, ModelConfig, ResidualControl, SelfAttention, sample, set_attention_backend,
                          standing_stats)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from metrics import Evaluator

DEFAULT_EVAL_SAMPLES = 10_000


# ----------------------------------------------------------------------------------------------
# Losses (pure functions of discriminator outputs)


def d_hinge(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def g_hinge(fake: Tensor) -> Tensor:
    return -fake.mean()


def d_wgan(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def g_wgan(fake: Tensor) -> Tensor:
    return -fake.mean()


def d_nonsaturating(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_nonsaturating(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "hinge": (d_hinge, g_hinge),
    "wgan-gp": (d_wgan, g_wgan),
    "ns": (d_nonsaturating, g_nonsaturating),
}


def gradient_penalty(d: nn.Module, real: Tensor, fake: Tensor, y: Tensor | None) -> Tensor:
    """Gulrajani et al. 2017: E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates x_hat."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x_hat, y).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


# ----------------------------------------------------------------------------------------------
# Helpers


def model_config(args: Namespace, num_classes: int) -> ModelConfig:
    return ModelConfig(
        imsize=args.imsize, arch=args.arch, z_dim=args.z_dim, g_conv_dim=args.g_conv_dim, d_conv_dim=args.d_conv_dim,
        num_classes=num_classes, g_attn=args.g_attn, d_attn=args.d_attn, attn_variant=args.attn_variant, span=args.span,
        attn_block=getattr(args, "attn_block", "attention"),
        g_sn=args.g_sn, cbn_sn=args.cbn_sn, init=args.init, bn_eps=args.bn_eps, sn_eps=args.sn_eps,
        d_relu_shortcut=args.d_relu_shortcut, sn_layers=args.sn_layers, convt_sn_dim=args.convt_sn_dim,
    ).resolved()


def resolve_device(name: str) -> torch.device:
    """--device for one process (auto: CUDA when available)."""
    return distributed.device_for(DistEnv(), name)


def attention_gammas(model: nn.Module) -> dict[str, float]:
    """name -> gamma of every attention layer, or of its residual control block (works through DataParallel)."""
    model = model.module if isinstance(model, nn.DataParallel) else model
    return {name: m.gamma.item() for name, m in model.named_modules() if isinstance(m, (SelfAttention, ResidualControl))}


def rng_state(device: torch.device) -> dict:
    """The random state of this process: Python, numpy, torch's CPU generator and, on CUDA, the
    generator of this process's own device only (not every visible GPU's)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "device": device.type,
    }


def set_rng_state(state: dict, device: torch.device) -> bool:
    """Restore a state saved by `rng_state`; returns whether the stream is restored bit for bit (False when
    it was saved on another kind of device). Files from before "device" was recorded hold every visible
    GPU's state: this device's index is taken from them when it exists."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    if device.type != "cuda":
        return not saved
    if not saved:
        return False
    index = 0 if "device" in state else (device.index or 0)
    if index >= len(saved):
        return False
    torch.cuda.set_rng_state(saved[index], device)
    return True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_rows(num_classes: int, limit: int = 16) -> list[int]:
    """The classes shown as grid rows: all of them, or `limit` spread evenly over them."""
    return torch.linspace(0, num_classes - 1, min(num_classes, limit)).round().long().tolist()


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint at the current step was saved (main.py exits with 3)."""


class StopRecorder:
    """SIGTERM/SIGINT handlers for the whole life of a training run, from the lock to the exit: a signal is
    recorded (`signal`), never acted on at a random point; the Trainer installs its own handlers for the
    loop and reads what arrived before. A second SIGINT stops at once (KeyboardInterrupt, which main.py
    turns into one line and exit 3). Used as a context manager; the previous handlers come back after."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.old: dict[int, object] = {}

    def handler(self, signum: int, frame: object) -> None:
        again = self.signal is not None
        self.signal = self.signal or signal.Signals(signum).name
        if again and signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRecorder":
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self.handler)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)


# Saves of checkpoints at least this large are announced, with the time they took (README, "Preemption").
REPORT_SAVE_BYTES = 100 * 2**20


def state_bytes(obj: object) -> int:
    """Bytes of the tensors in a nested checkpoint dict (about its size on disk)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


class EMA:
    """Exponential moving average of a generator (BigGAN-PyTorch `utils.ema`): after each G step,
    target = decay * target + (1 - decay) * source for every floating-point state-dict entry
    (parameters and buffers: batch-norm statistics, spectral-norm u and v); integer entries are
    copied. Until `start` steps the target is a copy of the source."""

    def __init__(self, source: nn.Module, decay: float, start: int) -> None:
        self.source, self.decay, self.start = source, decay, start
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        src, tgt = source.state_dict(), self.model.state_dict()  # detached views of the live tensors
        self.tgt = [tgt[k] for k in tgt if tgt[k].is_floating_point()]
        self.src = [src[k] for k in tgt if tgt[k].is_floating_point()]
        self.other_pairs = [(tgt[k], src[k]) for k in tgt if not tgt[k].is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after the G update of `step` (1-based)."""
        if step < self.start:
            torch._foreach_copy_(self.tgt, self.src)
        else:
            torch._foreach_lerp_(self.tgt, self.src, 1.0 - self.decay)
        for t, s in self.other_pairs:
            t.copy_(s)


# ----------------------------------------------------------------------------------------------


class Trainer:
    """Builds G, D, their optimizers and (with --ema) the EMA generator from `args`; `train()` runs the
    loop, `sample_grid()` writes a grid. `dist` is the torchrun environment (one process by default)."""

    def __init__(self, args: Namespace, cfg: ModelConfig, loader: DataLoader | None = None,
                 evaluator: "Evaluator | None" = None, dist: DistEnv | None = None) -> None:
        self.args = args
        self.loader = loader
        self.evaluator = evaluator
        self.dist = dist or DistEnv()
        self.best: dict[str, float] = {}  # best_<name> checkpoint -> its metric value (see the evaluator's `best`)
        self.device = distributed.device_for(self.dist, args.device)
        if self.dist.enabled and args.parallel:
            raise ValueError("--parallel (DataParallel) cannot be combined with torchrun; drop --parallel")
        if getattr(args, "sync_bn", False) and self.device.type != "cuda":
            raise ValueError("--sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop it on the CPU")
        seed_everything(args.seed)
        self.cfg = cfg.resolved()
        self.G = Generator(self.cfg).to(self.device)
        self.D = Discriminator(self.cfg).to(self.device)
        if getattr(args, "sync_bn", False) and self.dist.enabled:
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        eps = getattr(args, "adam_eps", 1e-8)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=args.g_lr, betas=(args.beta1, args.beta2), eps=eps)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=args.d_lr, betas=(args.beta1, args.beta2), eps=eps)
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, args.lr_decay_step, args.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, args.lr_decay_step, args.lr_decay)
        self.d_loss_fn, self.g_loss_fn = LOSSES[args.adv_loss]
        self.accum = getattr(args, "accum", 1)
        self.step = 0
        self.epoch, self.batch_in_epoch = 0, 0  # data position: batches of this process consumed in the epoch
        self.last_saved: Path | None = None
        self.source: dict | None = None  # a converted checkpoint's origin (convert.py), carried into every save
        self.train_seconds = 0.0  # time in training iterations since this process started training
        self.stop_signal: str | None = None  # set by the handlers (or taken from a StopRecorder by main.py)
        self.saving = False  # a checkpoint is being written: a second SIGINT waits for it
        self.bad_warned: str | None = None
        self.run = self.run_folders(args)
        # Fixed noise for sample grids: one row per class when conditional (at most 16 evenly spaced classes).
        g = torch.Generator().manual_seed(args.seed + 1)
        if self.cfg.num_classes:
            rows = torch.tensor(class_rows(self.cfg.num_classes))
            self.fixed_y = rows.repeat_interleave(8).to(self.device)
        else:
            self.fixed_y = None
        n = 8 * (len(rows) if self.cfg.num_classes else 8)
        self.fixed_z = torch.randn(n, self.cfg.z_dim, generator=g).to(self.device)
        # Speed options (--amp, --channels_last, --attn_backend, --compile) and the modules the steps call.
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[getattr(args, "amp", "off")]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")
        self.memory_format = torch.channels_last if getattr(args, "channels_last", False) else torch.contiguous_format
        set_attention_backend(self.G, getattr(args, "attn_backend", "sdpa"))
        # WGAN-GP differentiates D's input gradient again; the fused kernels have no double backward.
        set_attention_backend(self.D, "math" if args.adv_loss == "wgan-gp" else getattr(args, "attn_backend", "sdpa"))
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        self.ema = EMA(self.G, args.ema_decay, args.ema_start) if getattr(args, "ema", False) else None
        self._standing: tuple[int, nn.Module] | None = None  # (step, G_eval with standing statistics)
        # g_train/d_train: the modules the G and D updates differentiate (DDP-wrapped under torchrun);
        # d_frozen: D as the G update calls it (never DDP: D's gradients are not wanted there).
        self.g_train, self.d_train = self.G, self.D
        self.ddp_g: nn.Module | None = None
        self.ddp_d: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # D's only buffers are its spectral-norm u and v, equal on every rank by construction (same init,
            # same all-reduced weights, the same power iteration), so they are not broadcast at each forward.
            self.ddp_g, self.ddp_d = DDP(self.G, device_ids=ids), DDP(self.D, device_ids=ids, broadcast_buffers=False)
            self.g_train, self.d_train = self.ddp_g, self.ddp_d
        elif args.parallel and self.device.type == "cuda" and torch.cuda.device_count() > 1:
            self.g_train, self.d_train = nn.DataParallel(self.G), nn.DataParallel(self.D)
        self.d_frozen = self.D if self.dist.enabled else self.d_train
        self.d_penalty = self.d_frozen  # the gradient penalty's D: never compiled (AOTAutograd has no double backward)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
            if getattr(args, "tf32", None) is not None:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        if getattr(args, "compile", False):
            # Only the training-mode calls are compiled; sampling and evaluation use the eager modules
            # (same parameters), so switching to eval mode never triggers a recompile.
            self.g_train, self.d_train = torch.compile(self.g_train), torch.compile(self.d_train)
            self.d_frozen = torch.compile(self.d_frozen) if self.dist.enabled else self.d_train
        if self.dist.rank:
            # Identical models (built from the same seed above), different noise on every process.
            self.seed_rank()

    def seed_rank(self) -> None:
        """This process's own noise stream, from (seed, rank, step)."""
        torch.manual_seed(self.args.seed + 1_000_003 * self.dist.rank + self.step)

    @property
    def G_eval(self) -> nn.Module:
        """The generator that samples, attention figures and metrics use: the EMA one when it exists, with
        standing batch-norm statistics under --standing_stats (computed once per step, on a copy)."""
        G = self.ema.model if self.ema is not None else self.G
        batches = getattr(self.args, "standing_stats", 0)
        if not batches:
            return G
        if self._standing is None or self._standing[0] != self.step:
            self._standing = (self.step, standing_stats(G, batches, self.args.eval_batch_size, seed=self.args.seed))
        return self._standing[1]

    @property
    def global_batch(self) -> int:
        """Real images per D update, over all processes and micro-batches."""
        return self.args.batch_size * self.accum * self.dist.world

    @staticmethod
    def run_folders(args: Namespace) -> dict[str, Path]:
        """The run's folders: <path>/<version>/ for models, samples, logs and attention maps."""
        return {
            "models": Path(args.model_save_path) / args.version,
            "samples": Path(args.sample_path) / args.version,
            "logs": Path(args.log_path) / args.version,
            "attn": Path(args.attn_path) / args.version,
        }

    # -- sampling --------------------------------------------------------------------------------

    def sample_labels(self, n: int) -> Tensor | None:
        if not self.cfg.num_classes:
            return None
        return torch.randint(0, self.cfg.num_classes, (n,), device=self.device)

    @torch.no_grad()
    def sample_grid(self, path: Path | None = None) -> tuple[Path, Tensor]:
        """Fixed-noise grid drawn in eval mode (then back to the previous mode); returns (png path, grid)."""
        imgs = sample(self.G_eval, self.fixed_z, self.fixed_y)
        grid = make_grid(imgs.float().cpu() * 0.5 + 0.5, nrow=8, padding=2).clamp(0, 1)
        path = path or self.run["samples"] / f"{self.step}_fake.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never a half-written PNG
            write_durably(path, lambda f: save_image(grid, f, format="png"))
        except OSError as e:
            raise CheckpointError(f"could not write the sample grid {path}: {why_not_written(e, path.parent)}; "
                                  f"free space and resume with --pretrained_model latest") from e
        return path, grid

    def attention_snapshot(self, writer: "SummaryWriter | None" = None) -> list[Path]:
        """Attention figures for the first --attn_samples fixed samples (one per class row when
        conditional) into attn/<version>/<step>_attn<k>.png, and TensorBoard."""
        import visualize

        n = getattr(self.args, "attn_samples", 0)
        if not n or not visualize.attention_layers(self.G_eval):
            return []
        per_row = 8
        idx = (torch.arange(n) * per_row) % len(self.fixed_z)
        y = self.fixed_y[idx] if self.fixed_y is not None else None
        points = visualize.parse_points(getattr(self.args, "attn_points", None), self.cfg.imsize)
        figs = visualize.attention_figures(self.G_eval, self.fixed_z[idx], y, points)
        paths = visualize.save_figures(figs, self.run["attn"], str(self.step))
        if writer:
            for k, fig in enumerate(figs):
                writer.add_image(f"attention/{k}", np.asarray(fig), self.step, dataformats="HWC")
        return paths

    # -- checkpoints -----------------------------------------------------------------------------

    def state(self, rng_ranks: list | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model_config": self.cfg.to_dict(),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.args).items()},
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            # Position in the data: batches of this process consumed in the epoch, and the batch size and
            # process count that give it in images (so that a run can resume under another layout).
            "data": {"epoch": self.epoch, "batch": self.batch_in_epoch, "world": self.dist.world, "batch_size": self.args.batch_size},
            "rng": rng_state(self.device),
            "rng_ranks": rng_ranks or [],
            "best": dict(self.best),
            "source": self.source,
        }

    def nonfinite_weights(self) -> list[str]:
        """Names of the models ('G', 'D', 'G_ema') holding a NaN or Inf in a parameter or buffer (one host sync)."""
        models = {"G": self.G, "D": self.D, **({"G_ema": self.ema.model} if self.ema is not None else {})}
        flags = torch.stack([torch.stack([torch.isfinite(t).all() for t in m.state_dict().values() if t.is_floating_point()]).all()
                             for m in models.values()]).tolist()
        return [name for name, ok in zip(models, flags) if not ok]

    def save(self, name: str | None = None) -> Path:
        """Write `<step>.pt` (or `<name>.pt`) on rank 0: a temporary file in the same folder, flushed,
        fsynced and renamed into place; a step checkpoint then becomes `latest` (same way), and older
        step checkpoints beyond --keep_last are removed. Step checkpoints are collective under torchrun
        (every rank calls this; the RNG states of all ranks are gathered); named ones are rank 0 only."""
        folder = self.run["models"]
        stem = name or str(self.step)
        path = folder / f"{stem}.pt"
        rng_ranks = distributed.gather_objects(self.dist, rng_state(self.device)) if name is None else None
        bad = self.nonfinite_weights()
        if bad:
            raise FloatingPointError(f"non-finite weights in {', '.join(bad)} at step {self.step}; not saved. "
                                     f"{self.resume_hint()}")
        if not self.dist.is_main:
            return path
        state = self.state(rng_ranks)
        size = state_bytes(state)
        loud = size >= REPORT_SAVE_BYTES
        if loud:
            print(f"writing checkpoint {path} ({size / 2**20:,.0f} MiB)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        self.saving = True  # a second SIGINT now waits for the rename (signals only set a flag)
        try:
            path = write_checkpoint(state, folder, stem, point_latest=name is None, previous=self.last_saved)
        finally:
            self.saving = False
        if loud:
            print(f"wrote {path} in {duration(time.perf_counter() - t0)}", file=sys.stderr, flush=True)
        if name is None:
            self.last_saved = path
            prune(folder, getattr(self.args, "keep_last", 0))
        return path

    def resume_hint(self) -> str:
        if self.last_saved is None:
            return "No checkpoint was written yet; lower --d_lr/--g_lr (or use --amp off) and start again."
        return (f"The last good checkpoint is {self.last_saved}; resume from it with --pretrained_model {self.last_saved.stem} "
                f"and a lower --d_lr/--g_lr, --amp off, or another --seed.")

    @staticmethod
    def load_part(path: Path, name: str, model: nn.Module, state: dict) -> None:
        """model.load_state_dict(state), with a mismatch as one CheckpointError line."""
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: its {name} weights do not fit the model its own config describes "
                                  f"({str(e).splitlines()[0].rstrip(':')}); the file is inconsistent (edited, or G and D "
                                  f"swapped): pick another checkpoint") from None

    def load(self, which: str, restore_training: bool = True) -> Path:
        path = checkpoint_path(self.run["models"], which)
        ckpt = load_checkpoint(path)
        check_same_model(ckpt["model_config"], self.cfg, path)
        self.load_part(path, "G", self.G, ckpt["G"])
        self.load_part(path, "D", self.D, ckpt["D"])
        self.step = int(ckpt["step"])
        self.source = ckpt.get("source")
        if ckpt.get("G_ema") is not None and self.ema is None and restore_training:
            raise CheckpointError(f"{path} holds an EMA generator, which resuming without --ema would drop; pass --ema true "
                                  f"(its decay was {ckpt.get('args', {}).get('ema_decay', 'not recorded')}) to keep it")
        if ckpt.get("G_ema") is not None and (self.ema is not None or not restore_training):
            if self.ema is None:  # sampling or scoring: use the saved EMA generator
                saved = ckpt.get("args", {})
                self.ema = EMA(self.G, saved.get("ema_decay", 0.9999), saved.get("ema_start", 0))
            self.load_part(path, "G_ema", self.ema.model, ckpt["G_ema"])
        elif self.ema is not None:
            self.ema.model.load_state_dict(self.G.state_dict())  # --ema added on resume: start from G
        if restore_training:
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
            self.sched_g.load_state_dict(ckpt["sched_g"])
            self.sched_d.load_state_dict(ckpt["sched_d"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            data = {"epoch": 0, "batch": 0, "world": 1, "batch_size": self.args.batch_size, **ckpt.get("data", {})}
            self.epoch = int(data["epoch"])
            images = data["batch"] * data["batch_size"] * data["world"]  # of the epoch, over all processes
            self.batch_in_epoch = images // (self.args.batch_size * self.dist.world)
            ranks = ckpt.get("rng_ranks") or []
            if len(ranks) == self.dist.world:
                exact = set_rng_state(ranks[self.dist.rank], self.device)
            elif self.dist.is_main:  # saved by another number of processes: the other ranks' streams start afresh
                exact = set_rng_state(ckpt["rng"], self.device) and not ranks and self.dist.world == 1
            else:
                self.seed_rank()
                exact = False
            if not exact and self.dist.is_main:
                saved = ckpt["rng"].get("device", "cuda" if ckpt["rng"].get("cuda") else "cpu")
                print(f"note: {path} was saved by {max(len(ranks), 1)} process(es) on {saved}, resumed by {self.dist.world} on "
                      f"{self.device.type}: training resumes, but its random stream is not restored bit for bit", flush=True)
            self.best.update(ckpt.get("best", {}))
            self.last_saved = path if path.stem.isdigit() else None
        return path

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, writer: "SummaryWriter | None" = None) -> dict:
        """Score G (the EMA one with --ema) with the evaluator, append to metrics.jsonl, log to
        TensorBoard, keep the best checkpoints the evaluator names (best_fid/best_is, or best_cls_acc/best_fid_cls).
        Rank 0 only."""
        from metrics import append_jsonl

        t0 = time.perf_counter()
        n = self.args.eval_samples or DEFAULT_EVAL_SAMPLES
        result = self.evaluator(self.G_eval, n, source=f"{self.args.version} step {self.step}")
        m = result["metrics"]
        scalars = self.evaluator.scalars(m)
        record = {"step": self.step, "kimg": self.step * self.global_batch * self.args.n_dis / 1000,
                  "train_seconds": round(self.train_seconds, 1),
                  "seconds": round(time.perf_counter() - t0, 3), **m}
        append_jsonl(self.run["models"] / "metrics.jsonl", record)
        if writer:
            for k, v in scalars.items():
                writer.add_scalar(k, v, self.step)
        for name, key, direction in self.evaluator.best:
            old = self.best.get(name)
            if old is None or (m[key] < old if direction == "min" else m[key] > old):
                self.best[name] = m[key]
                self.save(f"best_{name}")
        print(" ".join([f"eval step {self.step}:"] + [f"{k.split('/')[1]} {v:.4f}" for k, v in scalars.items()]
                       + [f"({record['seconds']:.0f} s)"]), flush=True)
        return record

    def truncate_metrics(self) -> set[int]:
        """On resume: drop metrics.jsonl records after the resumed step, so that no step appears twice.
        Returns the steps that keep a record."""
        path = self.run["models"] / "metrics.jsonl"
        if not path.is_file():
            return set()
        raw = path.read_text().splitlines()
        lines, dropped = [], False
        for number, ln in enumerate(raw, 1):
            if not ln.strip():
                continue
            try:
                lines.append((ln, json.loads(ln).get("step", 0)))
            except (json.JSONDecodeError, AttributeError):
                if any(rest.strip() for rest in raw[number:]):
                    raise CheckpointError(f"{path} line {number} is corrupt (not a JSON record); delete or repair that line, "
                                          f"then resume")
                print(f"warning: {path}: dropped an incomplete last line (a write was cut off)", file=sys.stderr, flush=True)
                dropped = True
        keep = [(ln, step) for ln, step in lines if step <= self.step]
        if len(keep) != len(lines) or dropped:
            write_text(path, "".join(ln + "\n" for ln, _ in keep))
        return {step for _, step in keep}

    # -- training --------------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless (x, y) on the device, starting at the saved data position; counts what is consumed."""
        while True:
            self.loader.batch_sampler.set_epoch(self.epoch, self.batch_in_epoch)
            for x, y in self.loader:
                self.batch_in_epoch += 1
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def autocast(self) -> torch.autocast:
        """Mixed precision for the forward passes (--amp); a no-op context when off."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    @staticmethod
    def micro_batches(k: int, ddp: nn.Module | None) -> Iterator[tuple[int, contextlib.AbstractContextManager]]:
        """(index, context) for K micro-batches: under DDP, gradients are all-reduced on the last only."""
        for i in range(k):
            yield i, (ddp.no_sync() if ddp is not None and i < k - 1 else contextlib.nullcontext())

    def generate(self, n: int) -> tuple[Tensor, Tensor | None]:
        """n fakes from the training-mode G and their labels (uniform)."""
        y_fake = self.sample_labels(n)
        return self.g_train(torch.randn(n, self.cfg.z_dim, device=self.device), y_fake), y_fake

    def fakes(self, n: int) -> tuple[Tensor, Tensor | None]:
        """n detached fakes and their labels, for a D update."""
        with torch.no_grad(), self.autocast():
            return self.generate(n)

    def d_backward(self, reals: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Accumulate D's gradients over the micro-batches `reals` (each loss divided by their number)."""
        a, k = self.args, len(reals)
        out: dict[str, Tensor] = {}
        for i, ctx in self.micro_batches(k, self.ddp_d):
            x, y = reals[i]
            if a.flip:
                flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
                x = torch.where(flip, x.flip(3), x)
            x = x.contiguous(memory_format=self.memory_format)
            y_real = y if self.cfg.num_classes else None
            fake, y_fake = self.fakes(x.shape[0])
            with ctx:
                with self.autocast():
                    d_real = self.d_train(x, y_real).float()
                    d_fake = self.d_train(fake, y_fake).float()
                loss = self.d_loss_fn(d_real, d_fake)
                parts = {"loss/d": loss, "d/real": d_real.mean(), "d/fake": d_fake.mean()}
                if a.adv_loss == "wgan-gp":
                    gp = gradient_penalty(self.d_penalty, x, fake.float(), y_real)  # in fp32, eager
                    loss = loss + a.lambda_gp * gp
                    parts["loss/gp"] = gp
                self.scaler.scale(loss / k).backward()
            for name, v in parts.items():
                out[name] = out.get(name, 0) + v.detach() / k
        return out

    def d_step(self, reals: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """One D update from --accum micro-batches of real images."""
        spectral.power_iteration(self.D)  # fp32, outside autocast
        self.opt_d.zero_grad(set_to_none=True)
        out = self.d_backward(reals)
        self.scaler.step(self.opt_d)
        self.scaler.update()
        return out

    def g_backward(self, k: int) -> dict[str, Tensor]:
        """Accumulate G's gradients over k micro-batches of --batch_size fakes."""
        b = self.args.batch_size
        total = torch.zeros((), device=self.device)
        for _, ctx in self.micro_batches(k, self.ddp_g):
            with ctx:
                with self.autocast():
                    fake, y_fake = self.generate(b)
                    loss = self.g_loss_fn(self.d_frozen(fake, y_fake).float())
                self.scaler.scale(loss / k).backward()
            total = total + loss.detach() / k
        return {"loss/g": total}

    def g_step(self) -> dict[str, Tensor]:
        """One G update from --accum micro-batches (D frozen), then the EMA update."""
        spectral.power_iteration(self.G)
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        out = self.g_backward(self.accum)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.step + 1)
        return out

    def iteration(self, batches: Iterator[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """n_dis D updates and one G update; advances the step and the LR schedules."""
        for _ in range(self.args.n_dis):
            logs = self.d_step([next(batches) for _ in range(self.accum)])
        logs.update(self.g_step())
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        return logs

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT set a flag that the loop acts on before the next step, sample or evaluation
        phase; a second SIGINT interrupts at once, except while a checkpoint is being written. The
        previous handlers come back afterwards."""
        def handler(signum: int, frame: object) -> None:
            again = self.stop_signal is not None
            self.stop_signal = self.stop_signal or signal.Signals(signum).name
            if again and signum == signal.SIGINT and not self.saving:
                raise KeyboardInterrupt

        old = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def stop_requested(self) -> bool:
        """Whether a stop signal arrived here (or, under torchrun, on any rank: one small CPU all-reduce)."""
        return distributed.any_rank(self.dist, [self.stop_signal is not None])[0]

    def log_line(self, logs: dict[str, Tensor], s_per_step: float, writer: "SummaryWriter | None") -> tuple[str, dict[str, float]]:
        a = self.args
        ips = self.global_batch * a.n_dis / max(s_per_step, 1e-9)
        vals = {k: v.item() for k, v in logs.items()}  # the only host sync of the step
        gam = {f"gamma/G.{k}": v for k, v in attention_gammas(self.G).items()}
        gam.update({f"gamma/D.{k}": v for k, v in attention_gammas(self.D).items()})
        lrs = {"lr/g": self.opt_g.param_groups[0]["lr"], "lr/d": self.opt_d.param_groups[0]["lr"]}
        if writer:
            for k, v in {**vals, **gam, **lrs, "speed/img_per_s": ips}.items():
                writer.add_scalar(k, v, self.step)
        eta = (a.total_step - self.step) * s_per_step
        gtxt = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in gam.items())
        line = (f"step {self.step}/{a.total_step} d_loss {vals['loss/d']:.4f} g_loss {vals['loss/g']:.4f} "
                f"D(x) {vals['d/real']:.3f} D(G(z)) {vals['d/fake']:.3f} {gtxt} {s_per_step:.3g} s/step {ips:.1f} img/s eta {duration(eta)}")
        return line, vals

    def due(self, every: int) -> bool:
        """Whether this step is one of every `every` steps (0: never), or the last step."""
        return bool(every) and (self.step % every == 0 or self.step == self.args.total_step)

    def eval_due(self) -> bool:
        """Whether this step has a scheduled evaluation (every --eval_step and the last step) that should
        run now: on rank 0, with an evaluator, and not after a stop signal."""
        a = self.args
        return self.dist.is_main and self.stop_signal is None and self.evaluator is not None and self.due(a.eval_step)

    def scheduled_evaluation(self, writer: "SummaryWriter | None") -> None:
        """evaluate(), abandoned (nothing recorded) when a stop signal arrives; a resume from this step
        evaluates it then, because metrics.jsonl has no record of it."""
        try:
            with progress.abortable(lambda: self.stop_signal is not None):
                self.evaluate(writer)
        except progress.Interrupted as e:
            print(f"evaluation at step {self.step} abandoned ({e}): a stop signal arrived", file=sys.stderr, flush=True)

    def train(self) -> None:
        from tqdm import tqdm

        a = self.args
        main = self.dist.is_main
        writer = None
        recorded: set[int] = set()
        if main:
            for p in self.run.values():
                p.mkdir(parents=True, exist_ok=True)
            options = {"args": vars(a), "model_config": self.cfg.to_dict(), "device": str(self.device),
                       "world_size": self.dist.world, "global_batch": self.global_batch,
                       "torch": torch.__version__, "G_params": sum(p.numel() for p in self.G.parameters()),
                       "D_params": sum(p.numel() for p in self.D.parameters())}
            write_json(self.run["models"] / "training_options.json", options)
            recorded = self.truncate_metrics()
            if a.use_tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run["logs"]), purge_step=self.step + 1 if self.step else None)
        self.G.train()
        self.D.train()
        bar = tqdm(total=a.total_step, initial=self.step, disable=not (sys.stderr.isatty() and main), dynamic_ncols=True)
        first = self.step + 1  # the first step of this process is logged, for its time and the ETA
        with self.stop_on_signals():
            if self.step and self.step not in recorded and self.eval_due():
                print(f"step {self.step} is an evaluation step without a record in metrics.jsonl (a stop came first): evaluating it now", flush=True)
                self.scheduled_evaluation(writer)
            batches = self.batches()  # loader workers start inside: they inherit the handlers, then ignore the signals
            try:
                stop = self.loop(batches, writer, first, bar)
            except CheckpointError as e:
                e.during_stop = self.stop_signal is not None  # main.py then exits 3, as for any stop
                raise
        bar.close()
        if writer:
            writer.close()
        if stop:
            who = f"rank {self.dist.rank} of {self.dist.world}: " if self.dist.enabled else ""
            if not self.dist.is_main:
                saved = f"rank 0 saved step {self.step}"
            elif self.last_saved is not None and self.last_saved.stem == str(self.step):
                saved = f"saved {self.last_saved}"
            else:
                saved = "no step was trained, nothing new to save"
            raise Preempted(f"{who}received {self.stop_signal or 'a stop signal on another rank'} at step {self.step}: "
                            f"{saved}; resume with --pretrained_model latest")

    def loop(self, batches: Iterator[tuple[Tensor, Tensor]], writer: "SummaryWriter | None", first: int, bar: object) -> bool:
        """The training steps with their logging, samples, evaluations and saves; returns whether a stop signal ended them."""
        a, main = self.args, self.dist.is_main
        interactive = sys.stderr.isatty() and main
        t_last, step_last = time.perf_counter(), self.step
        last_step_saved = self.step
        stop = False
        while self.step < a.total_step and not (stop := self.stop_requested()):
            t_step = time.perf_counter()
            logs = self.iteration(batches)
            self.train_seconds += time.perf_counter() - t_step  # data and optimizer steps, not sampling or evaluation
            bar.update(1)
            if self.due(a.log_step) or self.step == first:
                now = time.perf_counter()
                s_per_step = (now - t_last) / max(self.step - step_last, 1)
                t_last, step_last = now, self.step
                line, vals = self.log_line(logs, s_per_step, writer if main else None)
                if main:
                    if interactive:
                        bar.set_postfix_str(f"d {vals['loss/d']:.3f} g {vals['loss/g']:.3f}")
                    else:
                        print(line, flush=True)
                    warning = check_bad_files(self.loader.dataset) if self.loader is not None else None
                    if warning and warning != self.bad_warned:
                        print(f"warning: {warning}", file=sys.stderr, flush=True)
                        self.bad_warned = warning
                finite = all(np.isfinite(v) for v in vals.values()) and not self.nonfinite_weights()
                if distributed.any_rank(self.dist, [not finite])[0]:
                    raise FloatingPointError(f"non-finite loss or weights at step {self.step} ({line}). {self.resume_hint()}")
            # After a stop signal no sample or evaluation phase starts (rank 0 alone runs them).
            if main and self.stop_signal is None and self.due(a.sample_step):
                _, grid = self.sample_grid()
                if writer:
                    writer.add_image("samples", grid, self.step)
                self.attention_snapshot(writer)
            if self.eval_due():
                self.scheduled_evaluation(writer)
            if self.due(a.model_save_step):
                self.save()
                last_step_saved = self.step
        if last_step_saved != self.step:  # a stop between scheduled saves: save here, still under the handlers
            self.save()
        return stop

