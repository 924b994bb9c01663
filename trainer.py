"""Training loop: losses, TTUR optimisation, the schedule of logs, samples, evaluations and saves, resume.

One iteration (= one "step", counted in generator updates as in the paper and the official code) is
`n_dis` discriminator updates followed by one generator update:
- D update: a real batch; fakes from G under no_grad (detached, so G's backward never runs in the D
  step, unlike heykeetae #48); one spectral-norm power iteration for D; loss = d_loss(D(x, y), D(G(z), y_fake))
  (+ lambda_gp * gradient penalty for WGAN-GP, in the same step and the same optimizer update).
- G update: one power iteration for G; loss = g_loss(D(G(z), y_fake)); D's parameters are frozen.
- `--diffaug`: D sees every image, real or fake, in both updates through DiffAugment (augment.py).
- `--cr_weight W`, `--cr_fake_weight W` (off by default; not in the paper): consistency regularization,
  by two of SAGAN's authors (CR-GAN: Zhang, Zhang, Odena and Lee, ICLR 2020, Eq. 1; bCR: Zhao et al., AAAI
  2021, Eq. 2-3). D's loss gains W times the mean squared change of D's logit when its input, a real image
  (`--cr_weight`) or a detached fake (`--cr_fake_weight`), is shifted by up to 1/8 of the side
  (augment.consistency_transform), with D's class logits too on real images where D has the head. The
  penalty is on D's logits, as StudioGAN computes it. The papers also mirror the image; this code mirrors
  only with `--flip` (see augment.py).
- `--ms_weight W` (off by default; not in the paper): MSGAN's mode-seeking term (Mao et al., CVPR 2019,
  Eq. 3, as their conditional code computes it). G's batch is drawn as two halves with the same labels
  and different z, and G's loss gains W / (mean|G(z1) - G(z2)| / mean|z1 - z2| + 1e-5), which falls as
  two latents of one class draw more different images. `--ms_space d` (not in MSGAN) measures the pair's
  distance in D's pooled features (the h that feeds D's linear and projection terms), each batch's features
  divided by their detached RMS so the ratio has the scale of an image's, instead of in pixels.
- With D's auxiliary classifier head (`d_ac`; off by default, not in the paper): `--ac_weight W` times the
  cross-entropy of the head's class logits joins both losses, on real images for D and on fakes against
  their drawn labels for G (`ac_loss`). Deliberate deviation from ACGAN (Odena et al. 2017, Eq. 3), whose
  D also learns to classify fakes: D's head learns the real classes only, so G is steered toward what real
  images of its label look like (the fakes' term, as in ACGAN, is G's alone). `--ac_g_weight W` (not in ACGAN;
  default: `--ac_weight`) weighs G's term alone, so D's head can learn at one weight while it pulls G at another.
- `--d_tac` (with the head; off by default, not in the paper): TAC-GAN's twin classifier (Gong et al., NeurIPS
  2019, as StudioGAN's TACGAN computes it, its two twin weights one flag). A second head of D learns the
  fakes' drawn labels (`--tac_weight W` times `loss/tac_d`, in D's loss), and G's loss subtracts W times that
  head's cross-entropy on its fakes (`loss/tac_g`): G is pushed toward its label by the first head and away from
  fakes that are easy to tell apart by the twin, which cancels ACGAN's pull toward the few most easily
  classified images of each class.
- `--d_pack M` (off by default, not in the paper): PacGAN (Lin et al., NeurIPS 2018), packed by label. D's
  update arranges the real batch into packs of M images of one label (sagan_models.pack_order; each label's
  remainder is left out of that update) and draws as many packs of fakes, M of one drawn label each; G's
  update draws its batch as packs too. D judges each pack once, on its label, and every loss term (the class
  heads and MSGAN's term in D's features included) is per pack, not per image.
Fake labels are drawn uniformly. Losses are small pure functions below (hinge is the paper's).

Scale (`--accum K`, torchrun, `--ema`): each optimizer step sums K micro-batches of `--batch_size`
(losses divided by K; under DDP the gradient all-reduce runs only on the last micro-batch), so the
global batch is batch_size x K x WORLD_SIZE. Batch norm in G sees micro-batches, not the global batch
(as in BigGAN-PyTorch's accumulation), unless `--sync_bn` (CUDA only) joins the processes' statistics.
The EMA generator follows BigGAN-PyTorch's `utils.ema`: every floating-point entry of G's state dict
(weights, batch-norm running statistics) is averaged after each G step with `--ema_decay`, and copied
outright before `--ema_start`. Deliberate deviation: the spectral-norm vectors u and v are not averaged.
The EMA generator advances its own, one power iteration on its averaged weights per update, as G does on
its weights. BigGAN-PyTorch averages u too, which is harmless there because its spectral norm runs a
power iteration from the stored u in every forward, eval mode included, so u is renormalised at use.
This code's forward uses the stored u and v as they are (spectral.py), and an average of unit vectors
that rotate is shorter than 1: sigma = u^T W v shrank and the weights grew. An `fmnist_32_long` run with
`--g_conv_dim 16` showed it: at step 5,000 its raw G drew 88% of samples in their class, its EMA
generator 10% (the attention output's u and v had turned, their averages' norms fallen).

The Trainer takes a `TrainOptions` (built from the flags by `parameter.train_options`), never the
argparse namespace. Checkpoint files are checkpoints.py's; pictures are visualize.py's; metrics.jsonl
and the best checkpoints' bookkeeping are metrics.py's (`MetricsLog`). The Trainer decides what goes
in a checkpoint (`state()`) and when each of them happens.

Exit codes of `main.py`: 0 done; 2 an error explained on one line; 3 stopped by SIGTERM/SIGINT after
saving a checkpoint at the current step (resume with `--pretrained_model latest`).
"""

from __future__ import annotations

import contextlib
import copy
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import augment
import distributed
import progress
import spectral
import visualize
from checkpoints import CHECKPOINT_FORMAT, CheckpointError, check_same_model, load_part, open_weights, prune, write_checkpoint
from data_loader import check_bad_files
from distributed import DistEnv
from durable import write_json
from metrics import MetricsLog, private_rng
from progress import duration
from sagan_models import (Discriminator, Generator, ModelConfig, ResidualControl, SelfAttention, pack_images, pack_order,
                          set_attention_backend, standing_stats)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from metrics import Evaluator


@dataclass
class TrainOptions:
    """Everything the Trainer reads, by the names of the flags that set it (`python main.py --help` gives each
    one's meaning and default; `parameter.train_options` fills this from them). `flags` is the whole command
    line as parsed, saved in every checkpoint and in training_options.json."""

    version: str
    model_save_path: str
    sample_path: str
    log_path: str
    attn_path: str
    device: str
    seed: int
    total_step: int
    n_dis: int
    batch_size: int
    accum: int
    adv_loss: str
    lambda_gp: float
    g_lr: float
    d_lr: float
    beta1: float
    beta2: float
    adam_eps: float
    lr_decay_step: int
    lr_decay: float
    ema: bool
    ema_decay: float
    ema_start: int
    standing_stats: int
    truncation: float
    flip: bool
    diffaug: str
    ms_weight: float
    ms_space: str
    ac_weight: float
    ac_g_weight: float
    tac_weight: float
    cr_weight: float
    cr_fake_weight: float
    amp: str
    channels_last: bool
    attn_backend: str
    compile: bool
    tf32: bool | None
    parallel: bool
    sync_bn: bool
    log_step: int
    sample_step: int
    model_save_step: int
    eval_step: int
    eval_samples: int | None
    eval_batch_size: int
    keep_last: int
    attn_samples: int
    attn_points: str | None
    use_tensorboard: bool
    flags: dict = field(default_factory=dict)

    @property
    def folders(self) -> dict[str, Path]:
        """The run's folders: <path>/<version>/ for models, samples, logs and attention maps."""
        return {"models": Path(self.model_save_path) / self.version, "samples": Path(self.sample_path) / self.version,
                "logs": Path(self.log_path) / self.version, "attn": Path(self.attn_path) / self.version}


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


def ac_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The auxiliary classifier's cross-entropy (ACGAN's L_C for one side): logits (B, K), labels (B,)."""
    return F.cross_entropy(logits.float(), y)


def consistency_loss(out: Tensor, out_t: Tensor) -> Tensor:
    """Consistency regularization's penalty (CR-GAN, Eq. 1; bCR, Eq. 2-3): the mean squared change of D's
    output when its input passes through the transform T (augment.consistency_transform)."""
    return F.mse_loss(out_t.float(), out.float())


MS_SPACES = ("image", "d")  # --ms_space: MSGAN's pixels, or D's pooled features


def mode_seeking(fake: Tensor, z: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's term (Mao et al. 2019, Eq. 3): the inverse of the image distance over the latent distance
    between the first and second halves of a batch (pairs drawn with the same labels). `fake` may be images
    (B, C, H, W) or any per-sample features (B, ...)."""
    f1, f2 = fake.float().chunk(2)  # (B/2, ...) each
    z1, z2 = z.float().chunk(2)  # (B/2, Z) each
    ratio = (f1 - f2).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + eps)


def unit_rms(h: Tensor) -> Tensor:
    """Features divided by their batch's RMS, detached (so only their directions and relative sizes carry
    gradient): --ms_space d puts D's features on the scale of an image's pixels."""
    h = h.float()
    return h / h.detach().pow(2).mean().sqrt().clamp_min(1e-8)


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


def attention_gammas(model: nn.Module) -> dict[str, float]:
    """name -> gamma of every attention layer, or of its residual control block (works through DataParallel)."""
    model = model.module if isinstance(model, nn.DataParallel) else model
    return {name: m.gamma.item() for name, m in model.named_modules() if isinstance(m, (SelfAttention, ResidualControl))}


def rng_state(device: torch.device) -> dict:
    """The random state of this process: Python, numpy, torch's CPU generator and, on CUDA, the
    generator of this process's own device only (not every visible GPU's). numpy's key is kept as int64:
    torch before 2.6 cannot save uint32 tensors."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
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
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
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


def cpu_bf16_units() -> str | None:
    """The bf16 instructions of this CPU that oneDNN's bf16 convolutions use ("AMX" or "AVX512-BF16"), or None:
    without them bf16 is converted to and from fp32 around fp32 arithmetic (BENCHMARKS.md, "bf16 on the CPU")."""
    for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        if getattr(torch.cpu, check, lambda: False)():
            return name
    return None


def machine_info(device: torch.device) -> dict[str, str]:
    """What a seeded run's numbers depend on besides the code and the flags: the CPU's model and the vector
    instructions torch's kernels use, and the GPU (docs/training.md, "Repeatability")."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def nonfinite(models: dict[str, nn.Module]) -> list[str]:
    """Names of the models holding a NaN or Inf in a parameter or buffer (one host sync)."""
    flags = torch.stack([torch.stack([torch.isfinite(t).all() for t in m.state_dict().values() if t.is_floating_point()]).all()
                         for m in models.values()]).tolist()
    return [name for name, ok in zip(models, flags) if not ok]


def log_line(step: int, total: int, logs: dict[str, Tensor], s_per_step: float, images_per_step: int, G: nn.Module, D: nn.Module,
             lrs: dict[str, float], writer: "SummaryWriter | None") -> tuple[str, dict[str, float]]:
    """The console line of a logged step and its values (also written to TensorBoard)."""
    ips = images_per_step / max(s_per_step, 1e-9)
    vals = {k: v.item() for k, v in logs.items()}  # the only host sync of the step
    gam = {f"gamma/G.{k}": v for k, v in attention_gammas(G).items()}
    gam.update({f"gamma/D.{k}": v for k, v in attention_gammas(D).items()})
    if writer:
        for k, v in {**vals, **gam, **lrs, "speed/img_per_s": ips}.items():
            writer.add_scalar(k, v, step)
    gtxt = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in gam.items())
    extra = ("loss/ms", "loss/ac_d", "loss/ac_g", "loss/tac_d", "loss/tac_g", "loss/cr", "loss/cr_fake")
    terms = "".join(f" {k.split('/', 1)[1]}_loss {vals[k]:.4f}" for k in extra if k in vals)
    line = (f"step {step}/{total} d_loss {vals['loss/d']:.4f} g_loss {vals['loss/g']:.4f}{terms} D(x) {vals['d/real']:.3f} "
            f"D(G(z)) {vals['d/fake']:.3f} {gtxt} {s_per_step:.3g} s/step {ips:.1f} img/s eta {duration((total - step) * s_per_step)}")
    return line, vals


@dataclass
class Wrapped:
    """The modules the steps call. g_train/d_train: what the G and D updates differentiate (DDP-wrapped under
    torchrun, compiled with --compile); d_frozen: D as the G update calls it (never DDP: D's gradients are not
    wanted there); d_penalty: the gradient penalty's D (never compiled: AOTAutograd has no double backward)."""

    g_train: nn.Module
    d_train: nn.Module
    d_frozen: nn.Module
    d_penalty: nn.Module
    ddp_g: nn.Module | None = None
    ddp_d: nn.Module | None = None


def wrap(G: nn.Module, D: nn.Module, opts: TrainOptions, dist: DistEnv, device: torch.device) -> Wrapped:
    """DDP under torchrun, DataParallel with --parallel on several GPUs, torch.compile with --compile."""
    w = Wrapped(G, D, D, D)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # D's only buffers are its spectral-norm u and v, equal on every rank by construction (same init,
        # same all-reduced weights, the same power iteration), so they are not broadcast at each forward.
        w.ddp_g, w.ddp_d = DDP(G, device_ids=ids), DDP(D, device_ids=ids, broadcast_buffers=False)
        w.g_train, w.d_train = w.ddp_g, w.ddp_d
    elif opts.parallel and device.type == "cuda" and torch.cuda.device_count() > 1:
        w.g_train, w.d_train = nn.DataParallel(G), nn.DataParallel(D)
    w.d_frozen = w.d_penalty = D if dist.enabled else w.d_train
    if opts.compile:
        # Only the training-mode calls are compiled; sampling and evaluation use the eager modules
        # (same parameters), so switching to eval mode never triggers a recompile.
        w.g_train, w.d_train = torch.compile(w.g_train), torch.compile(w.d_train)
        w.d_frozen = torch.compile(w.d_frozen) if dist.enabled else w.d_train
    return w


def micro_batches(k: int, ddp: nn.Module | None) -> Iterator[tuple[int, contextlib.AbstractContextManager]]:
    """(index, context) for K micro-batches: under DDP, gradients are all-reduced on the last only."""
    for i in range(k):
        yield i, (ddp.no_sync() if ddp is not None and i < k - 1 else contextlib.nullcontext())


def resume_hint(last_saved: Path | None) -> str:
    """What to do after a divergence: resume from the last good checkpoint with lower rates, or start again."""
    if last_saved is None:
        return "No checkpoint was written yet; lower --d_lr/--g_lr (or use --amp off) and start again."
    return (f"The last good checkpoint is {last_saved}; resume from it with --pretrained_model {last_saved.stem} "
            f"and a lower --d_lr/--g_lr, --amp off, or another --seed.")


def report(line: str, vals: dict[str, float], bar: object, loader: DataLoader | None, warned: str | None) -> str | None:
    """Print the log line (or show the losses on the progress bar on a terminal), and warn when unreadable images
    appear in the loader's dataset (once per new count); returns the warning last given."""
    if sys.stderr.isatty():
        bar.set_postfix_str(f"d {vals['loss/d']:.3f} g {vals['loss/g']:.3f}")
    else:
        print(line, flush=True)
    warning = check_bad_files(loader.dataset) if loader is not None else None
    if warning and warning != warned:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return warning or warned


def restore_rng(ckpt: dict, path: Path, dist: DistEnv, device: torch.device) -> bool:
    """This process's random state from a checkpoint; False (and a note on rank 0) when it cannot be restored
    bit for bit (saved by another number of processes or on another kind of device)."""
    ranks = ckpt.get("rng_ranks") or []
    if len(ranks) == dist.world:
        exact = set_rng_state(ranks[dist.rank], device)
    elif dist.is_main:  # saved by another number of processes: the other ranks' streams start afresh
        exact = set_rng_state(ckpt["rng"], device) and not ranks and dist.world == 1
    else:
        return False
    if not exact and dist.is_main:
        saved = ckpt["rng"].get("device", "cuda" if ckpt["rng"].get("cuda") else "cpu")
        print(f"note: {path} was saved by {max(len(ranks), 1)} process(es) on {saved}, resumed by {dist.world} on "
              f"{device.type}: training resumes, but its random stream is not restored bit for bit", flush=True)
    return exact


def apply_schedule(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.StepLR, lr: float, step_size: int,
                   gamma: float) -> tuple[float, int, float] | None:
    """Make a restored optimizer and StepLR follow these flags (a resumed run's --*_lr, --lr_decay_step and
    --lr_decay); the rate becomes lr * gamma ** (step // step_size). Returns the checkpoint's (lr, step_size,
    gamma) when they differed; None, touching nothing, when they agree (a plain resume stays bit for bit)."""
    saved, lrs = (sched.base_lrs[0], sched.step_size, sched.gamma), [lr] * len(sched.base_lrs)
    if (sched.base_lrs, sched.step_size, sched.gamma) == (lrs, step_size, gamma):
        return None
    sched.base_lrs, sched.step_size, sched.gamma = lrs, step_size, gamma
    now = lr * gamma ** (sched.last_epoch // step_size)
    for group in opt.param_groups:
        group["initial_lr"], group["lr"] = lr, now
    sched._last_lr = [now] * len(opt.param_groups)
    return saved


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint at the current step was saved (main.py exits with 3)."""


class StopRecorder:
    """SIGTERM/SIGINT handlers for the whole life of a training run, from the lock to the exit: a signal is
    recorded (`signal`), never acted on at a random point; the training loop reads it before each step,
    sample and evaluation phase. A second SIGINT stops at once (KeyboardInterrupt, which main.py turns into
    one line and exit 3), except while `busy` (a checkpoint being written). A context manager (re-entrant);
    the previous handlers come back after (SIGTERM's only if no stop was recorded)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.busy = False
        self.depth = 0
        self.old: dict[int, object] = {}

    def handler(self, signum: int, frame: object) -> None:
        again = self.signal is not None
        self.signal = self.signal or signal.Signals(signum).name
        if again and signum == signal.SIGINT and not self.busy:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRecorder":
        self.depth += 1
        if self.depth == 1:
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self.old[sig] = signal.signal(sig, self.handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            for sig, h in self.old.items():
                # Once a stop is recorded the run is on its way out: more SIGTERMs (a scheduler that repeats
                # them) are swallowed until the process exits, so it still ends with exit 3, not killed by one
                # of them. A Python no-op, not SIG_IGN, which child processes would inherit.
                signal.signal(sig, _ignore if self.signal and sig == signal.SIGTERM else h)
            self.old = {}


def _ignore(signum: int, frame: object) -> None:
    """A signal handler that does nothing (see StopRecorder.__exit__)."""


# Saves of checkpoints at least this large are announced, with the time they took (docs/training.md, "Preemption").
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
    (parameters and batch-norm statistics); integer entries are copied. The target's spectral-norm
    vectors u and v are its own: one power iteration on its averaged weights per update, not an average
    of the source's (see the module docstring). Until `start` steps the target is a copy of the source,
    u and v included."""

    def __init__(self, source: nn.Module, decay: float, start: int) -> None:
        self.source, self.decay, self.start = source, decay, start
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        src, tgt = source.state_dict(), self.model.state_dict()  # detached views of the live tensors
        vectors = {f"{name}.{b}" for name, m in self.model.named_modules() if isinstance(m, spectral.SpectralNorm) for b in ("_u", "_v")}
        averaged = [k for k in tgt if tgt[k].is_floating_point() and k not in vectors]
        self.tgt, self.src = [tgt[k] for k in averaged], [src[k] for k in averaged]
        self.vec_tgt, self.vec_src = [tgt[k] for k in sorted(vectors)], [src[k] for k in sorted(vectors)]
        self.other_pairs = [(tgt[k], src[k]) for k in tgt if not tgt[k].is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after the G update of `step` (1-based)."""
        if step < self.start:
            torch._foreach_copy_(self.tgt + self.vec_tgt, self.src + self.vec_src)
        else:
            torch._foreach_lerp_(self.tgt, self.src, 1.0 - self.decay)
            for layer, sn in spectral.sn_layers(self.model):
                sn.iterate(spectral.original_weight(layer))
        for t, s in self.other_pairs:
            t.copy_(s)


# ----------------------------------------------------------------------------------------------


class Trainer:
    """Builds G, D, their optimizers and (with --ema) the EMA generator; `train()` runs the schedule.
    `dist` is the torchrun environment (one process by default); `stops` records stop signals (main.py
    passes the one it installed at the start of the run)."""

    def __init__(self, opts: TrainOptions, cfg: ModelConfig, loader: DataLoader | None = None,
                 evaluator: "Evaluator | None" = None, dist: DistEnv | None = None, stops: StopRecorder | None = None) -> None:
        self.opts, self.loader, self.evaluator = opts, loader, evaluator
        self.dist = dist or DistEnv()
        self.stops = stops or StopRecorder()
        self.device = distributed.device_for(self.dist, opts.device)
        if self.dist.enabled and opts.parallel:
            raise ValueError("--parallel (DataParallel) cannot be combined with torchrun; drop --parallel")
        if opts.sync_bn and self.device.type != "cuda":
            raise ValueError("--sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop it on the CPU")
        seed_everything(opts.seed)
        self.cfg = cfg.resolved()
        m, classes = self.cfg.d_pack, self.cfg.num_classes
        if m > 1 and classes and opts.batch_size <= classes * (m - 1):
            raise ValueError(f"--d_pack {m} packs {m} real images of one class from each batch of {opts.batch_size}, which may "
                             f"hold none among {classes} classes: use --batch_size {classes * (m - 1) + 1} or more")
        self.G = Generator(self.cfg).to(self.device)
        self.D = Discriminator(self.cfg).to(self.device)
        if opts.sync_bn and self.dist.enabled:
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        self.opt_g, self.opt_d = (torch.optim.Adam(m.parameters(), lr=lr, betas=(opts.beta1, opts.beta2), eps=opts.adam_eps)
                                  for m, lr in ((self.G, opts.g_lr), (self.D, opts.d_lr)))
        self.sched_g, self.sched_d = (torch.optim.lr_scheduler.StepLR(o, opts.lr_decay_step, opts.lr_decay) for o in (self.opt_g, self.opt_d))
        self.d_loss_fn, self.g_loss_fn = LOSSES[opts.adv_loss]
        self.step = 0
        self.epoch, self.batch_in_epoch = 0, 0  # data position: batches of this process consumed in the epoch
        self.last_saved: Path | None = None
        self.source: dict | None = None  # a converted checkpoint's origin (convert.py), carried into every save
        self.train_seconds = 0.0  # time in training iterations since this process started training
        self.bad_warned: str | None = None
        self.run = opts.folders
        self.metrics = MetricsLog(self.run["models"] / "metrics.jsonl")
        self.fixed_z, self.fixed_y = visualize.fixed_noise(self.cfg, opts.seed + 1, self.device, opts.truncation)
        # Speed options (--amp, --channels_last, --attn_backend, --compile, --tf32)
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[opts.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")
        self.memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
        self.diffaug = augment.parse_policy(opts.diffaug)
        set_attention_backend(self.G, opts.attn_backend)
        # WGAN-GP differentiates D's input gradient again; the fused kernels have no double backward.
        set_attention_backend(self.D, "math" if opts.adv_loss == "wgan-gp" else opts.attn_backend)
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        self.ema = EMA(self.G, opts.ema_decay, opts.ema_start) if opts.ema else None
        self._standing: tuple[int, nn.Module] | None = None  # (step, G_eval with standing statistics)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
            if opts.tf32 is not None:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(opts.tf32)
        self.w = wrap(self.G, self.D, opts, self.dist, self.device)
        if self.dist.rank:
            self.seed_rank()  # identical models (built from the same seed above), different noise on every process

    def seed_rank(self) -> None:
        """This process's own noise stream, from (seed, rank, step)."""
        torch.manual_seed(self.opts.seed + 1_000_003 * self.dist.rank + self.step)

    @property
    def G_eval(self) -> nn.Module:
        """The generator that samples, attention figures and metrics use: the EMA one when it exists, with
        standing batch-norm statistics under --standing_stats (computed once per step, on a copy)."""
        G = self.ema.model if self.ema is not None else self.G
        if not self.opts.standing_stats:
            return G
        if self._standing is None or self._standing[0] != self.step:
            self._standing = (self.step, standing_stats(G, self.opts.standing_stats, self.opts.eval_batch_size, seed=self.opts.seed))
        return self._standing[1]

    @property
    def global_batch(self) -> int:
        """Real images per D update, over all processes and micro-batches."""
        return self.opts.batch_size * self.opts.accum * self.dist.world

    # -- checkpoints -----------------------------------------------------------------------------

    def state(self, rng_ranks: list | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "model_config": self.cfg.to_dict(),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.opts.flags.items()},
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.ema.model.state_dict() if self.ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(), "scaler": self.scaler.state_dict(),
            # Position in the data: batches of this process consumed in the epoch, and the batch size and
            # process count that give it in images (so that a run can resume under another layout).
            "data": {"epoch": self.epoch, "batch": self.batch_in_epoch, "world": self.dist.world, "batch_size": self.opts.batch_size},
            "rng": rng_state(self.device), "rng_ranks": rng_ranks or [], "best": dict(self.metrics.best), "source": self.source,
        }

    def models(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, **({"G_ema": self.ema.model} if self.ema is not None else {})}

    def save(self, name: str | None = None) -> Path:
        """Write `<step>.pt` (or `<name>.pt`) on rank 0 (checkpoints.write_checkpoint: durable, atomic); a step
        checkpoint then becomes `latest`, and older step checkpoints beyond --keep_last are removed. Step
        checkpoints are collective under torchrun (the RNG states of all ranks are gathered); named ones are
        rank 0 only."""
        folder, stem = self.run["models"], name or str(self.step)
        path = folder / f"{stem}.pt"
        rng_ranks = distributed.gather_objects(self.dist, rng_state(self.device)) if name is None else None
        bad = nonfinite(self.models())
        if bad:
            raise FloatingPointError(f"non-finite weights in {', '.join(bad)} at step {self.step}; not saved. {resume_hint(self.last_saved)}")
        if not self.dist.is_main:
            return path
        state = self.state(rng_ranks)
        size = state_bytes(state)
        loud = size >= REPORT_SAVE_BYTES
        if loud:
            print(f"writing checkpoint {path} ({size / 2**20:,.0f} MiB)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        self.stops.busy = True  # a second SIGINT now waits for the rename (signals only set a flag)
        try:
            path = write_checkpoint(state, folder, stem, point_latest=name is None, previous=self.last_saved)
        finally:
            self.stops.busy = False
        if loud:
            print(f"wrote {path} in {duration(time.perf_counter() - t0)}", file=sys.stderr, flush=True)
        if name is None:
            self.last_saved = path
            prune(folder, self.opts.keep_last)
        return path

    def load(self, which: str, restore_training: bool = True) -> Path:
        path, ckpt = open_weights(self.run["models"], which)  # a step, latest, best_*, or an export (weights only)
        check_same_model(ckpt["model_config"], self.cfg, path)
        load_part(path, "G", self.G, ckpt["G"])
        load_part(path, "D", self.D, ckpt["D"])
        self.step, self.source = int(ckpt["step"]), ckpt.get("source")
        if ckpt.get("G_ema") is not None and self.ema is None and restore_training:
            raise CheckpointError(f"{path} holds an EMA generator, which resuming without --ema would drop; pass --ema true "
                                  f"(its decay was {ckpt.get('args', {}).get('ema_decay', 'not recorded')}) to keep it")
        if ckpt.get("G_ema") is not None:
            if self.ema is None:  # sampling or scoring: use the saved EMA generator
                saved = ckpt.get("args", {})
                self.ema = EMA(self.G, saved.get("ema_decay", 0.9999), saved.get("ema_start", 0))
            load_part(path, "G_ema", self.ema.model, ckpt["G_ema"])
        elif self.ema is not None:
            self.ema.model.load_state_dict(self.G.state_dict())  # --ema added on resume: start from G
        if not restore_training or "export" in ckpt:
            return path
        for obj, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d"), (self.sched_g, "sched_g"), (self.sched_d, "sched_d")):
            obj.load_state_dict(ckpt[key])
        for name, opt, sched, lr in (("G", self.opt_g, self.sched_g, self.opts.g_lr), ("D", self.opt_d, self.sched_d, self.opts.d_lr)):
            saved = apply_schedule(opt, sched, lr, self.opts.lr_decay_step, self.opts.lr_decay)
            if saved and self.dist.is_main:
                print(f"note: {path} trained {name} at lr {saved[0]:g} x {saved[2]:g} every {saved[1]:,} steps; resumed with "
                      f"lr {lr:g} x {self.opts.lr_decay:g} every {self.opts.lr_decay_step:,} steps (now {opt.param_groups[0]['lr']:g})",
                      flush=True)
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        data = {"epoch": 0, "batch": 0, "world": 1, "batch_size": self.opts.batch_size, **ckpt.get("data", {})}
        self.epoch = int(data["epoch"])
        images = data["batch"] * data["batch_size"] * data["world"]  # of the epoch, over all processes
        self.batch_in_epoch = images // (self.opts.batch_size * self.dist.world)
        if not restore_rng(ckpt, path, self.dist, self.device) and not self.dist.is_main:
            self.seed_rank()
        self.metrics.best.update(ckpt.get("best", {}))
        self.last_saved = path if path.stem.isdigit() else None
        return path

    # -- the step --------------------------------------------------------------------------------

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

    def generate(self, n: int, paired: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """n fakes from the training-mode G, their labels (uniform) and their z. paired (--ms_weight): the two
        halves of the batch share their labels and differ in z. With --d_pack M, each M consecutive fakes share
        one label (a pack)."""
        k, m = (n // 2 if paired else n), self.cfg.d_pack
        y = torch.randint(0, self.cfg.num_classes, (k // m,), device=self.device) if self.cfg.num_classes else None
        y = y.repeat_interleave(m) if y is not None and m > 1 else y  # (k,)
        y_fake = torch.cat([y, y]) if paired and y is not None else y  # (B,); paired: y_i = y_{i + B/2}
        z = torch.randn(n, self.cfg.z_dim, device=self.device)  # (B, Z)
        return self.w.g_train(z, y_fake), y_fake, z

    def fakes(self, n: int) -> tuple[Tensor, Tensor | None]:
        """n detached fakes and their labels, for a D update."""
        with torch.no_grad(), self.autocast():
            fake, y_fake, _ = self.generate(n)
        return fake, y_fake

    def pack(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """D's input from images in packs of d_pack consecutive ones of one label (PacGAN): (B/M, M*C, H, W) and each
        pack's label (B/M,); the images and labels as they are when d_pack is 1."""
        m = self.cfg.d_pack
        if m == 1:
            return x, y
        return pack_images(x, m).contiguous(memory_format=self.memory_format), (y[::m] if y is not None else None)

    def augment(self, x: Tensor) -> Tensor:
        """DiffAugment (--diffaug; augment.py) of a batch D is about to see, real or fake; the identity when off."""
        return augment.diff_augment(x, self.diffaug).contiguous(memory_format=self.memory_format) if self.diffaug else x

    def judge(self, d: nn.Module, x: Tensor, y: Tensor | None, features: bool = False,
              twin: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """D's logits in fp32 (B,); with its auxiliary classifier head (d_ac), its class logits (B, K); with
        `twin` (d_tac), the twin head's class logits (B, K); with `features`, its pooled features (B, C).
        Each is None when not asked for."""
        out = d(x, y, return_cls=self.cfg.d_ac, return_twin=twin, return_features=features)
        logit, *rest = out if isinstance(out, tuple) else (out,)
        cls = rest.pop(0) if self.cfg.d_ac else None
        tw = rest.pop(0) if twin else None
        return logit.float(), cls, tw, (rest.pop(0) if features else None)

    def d_step(self, reals: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """One D update from --accum micro-batches of real images."""
        spectral.power_iteration(self.D)  # fp32, outside autocast
        self.opt_d.zero_grad(set_to_none=True)
        out = self.d_backward(reals)
        self.scaler.step(self.opt_d)
        self.scaler.update()
        return out

    def d_backward(self, reals: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Accumulate D's gradients over the micro-batches `reals` (each loss divided by their number)."""
        k, out = len(reals), {}
        for i, ctx in micro_batches(k, self.w.ddp_d):
            x, y = reals[i]
            m = self.cfg.d_pack
            if m > 1:  # whole packs only: of one label each when labelled
                keep = pack_order(y, m) if self.cfg.num_classes else slice(0, len(x) - len(x) % m)
                x, y = x[keep], y[keep]
            if self.opts.flip:
                x = augment.random_flip(x)
            x = self.augment(x).contiguous(memory_format=self.memory_format)
            y_real = y if self.cfg.num_classes else None
            fake, y_fake = self.fakes(x.shape[0])
            x, y_real = self.pack(x, y_real)  # (P, M*C, H, W), (P,): the identity when --d_pack is 1
            fake, y_fake = self.pack(self.augment(fake), y_fake)
            with ctx:
                with self.autocast():
                    d_real, cls_real, _, _ = self.judge(self.w.d_train, x, y_real)
                    if self.cfg.d_tac:
                        d_fake, _, twin_fake, _ = self.judge(self.w.d_train, fake, y_fake, twin=True)
                    else:
                        d_fake = self.w.d_train(fake, y_fake).float()
                loss = self.d_loss_fn(d_real, d_fake)
                parts = {"loss/d": loss, "d/real": d_real.mean(), "d/fake": d_fake.mean()}
                if cls_real is not None:
                    parts["loss/ac_d"] = ac_loss(cls_real, y_real)
                    loss = loss + self.opts.ac_weight * parts["loss/ac_d"]
                if self.cfg.d_tac:
                    parts["loss/tac_d"] = ac_loss(twin_fake, y_fake)
                    loss = loss + self.opts.tac_weight * parts["loss/tac_d"]
                if self.opts.cr_weight:
                    parts["loss/cr"] = self.consistency(x, y_real, d_real, cls_real)
                    loss = loss + self.opts.cr_weight * parts["loss/cr"]
                if self.opts.cr_fake_weight:
                    parts["loss/cr_fake"] = self.consistency(fake, y_fake, d_fake)
                    loss = loss + self.opts.cr_fake_weight * parts["loss/cr_fake"]
                if self.opts.adv_loss == "wgan-gp":
                    parts["loss/gp"] = gradient_penalty(self.w.d_penalty, x, fake.float(), y_real)  # in fp32, eager
                    loss = loss + self.opts.lambda_gp * parts["loss/gp"]
                self.scaler.scale(loss / k).backward()
            for name, v in parts.items():
                out[name] = out.get(name, 0) + v.detach() / k
        return out

    def consistency(self, x: Tensor, y: Tensor | None, logit: Tensor, cls: Tensor | None = None) -> Tensor:
        """The consistency term for images x that D judged as `logit` (and, on real images with D's class head,
        `cls`): D judges T(x) in the same training forward (gradient through both) and the outputs' squared
        change is the penalty (consistency_loss; class logits added where given)."""
        with self.autocast():
            x_t = augment.consistency_transform(x, self.opts.flip).contiguous(memory_format=self.memory_format)
            logit_t, cls_t, _, _ = self.judge(self.w.d_train, x_t, y)
        penalty = consistency_loss(logit, logit_t)
        return penalty if cls is None else penalty + consistency_loss(cls, cls_t)

    def g_step(self) -> dict[str, Tensor]:
        """One G update from --accum micro-batches of --batch_size fakes (D frozen), then the EMA update."""
        spectral.power_iteration(self.G)
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        k, out = self.opts.accum, {}
        in_d = bool(self.opts.ms_weight) and self.opts.ms_space == "d"  # the term on D's features, not pixels
        for _, ctx in micro_batches(k, self.w.ddp_g):
            with ctx:
                with self.autocast():
                    fake, y_fake, z = self.generate(self.opts.batch_size, paired=bool(self.opts.ms_weight))
                    packed, y_fake = self.pack(self.augment(fake), y_fake)
                    d_fake, cls_fake, twin_fake, h_fake = self.judge(self.w.d_frozen, packed, y_fake,
                                                                     features=in_d, twin=self.cfg.d_tac)
                loss = self.g_loss_fn(d_fake)
                parts = {"loss/g": loss}
                if cls_fake is not None:
                    parts["loss/ac_g"] = ac_loss(cls_fake, y_fake)
                    loss = loss + self.opts.ac_g_weight * parts["loss/ac_g"]
                if twin_fake is not None:
                    parts["loss/tac_g"] = ac_loss(twin_fake, y_fake)
                    loss = loss - self.opts.tac_weight * parts["loss/tac_g"]
                if self.opts.ms_weight:
                    z_d = z.reshape(h_fake.shape[0], -1) if in_d else z  # with --d_pack M, a pack's z: (B/M, M*Z)
                    parts["loss/ms"] = mode_seeking(unit_rms(h_fake) if in_d else fake, z_d)
                    loss = loss + self.opts.ms_weight * parts["loss/ms"]
                self.scaler.scale(loss / k).backward()
            for name, v in parts.items():
                out[name] = out.get(name, 0) + v.detach() / k
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.step + 1)
        return out

    def iteration(self, batches: Iterator[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """n_dis D updates and one G update; advances the step and the LR schedules."""
        for _ in range(self.opts.n_dis):
            logs = self.d_step([next(batches) for _ in range(self.opts.accum)])
        logs.update(self.g_step())
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        return logs

    # -- the schedule ----------------------------------------------------------------------------

    def due(self, every: int) -> bool:
        """Whether this step is one of every `every` steps (0: never), or the last step."""
        return bool(every) and (self.step % every == 0 or self.step == self.opts.total_step)

    def evaluate(self, writer: "SummaryWriter | None" = None) -> dict | None:
        """Score G_eval (metrics.MetricsLog.evaluate: metrics.jsonl, TensorBoard, the best checkpoints); abandoned,
        with nothing recorded, when a stop signal arrives (a resume then evaluates this step). Rank 0 only."""
        kimg = self.step * self.global_batch * self.opts.n_dis / 1000
        try:
            with progress.abortable(lambda: self.stops.signal is not None), private_rng(self.device):
                return self.metrics.evaluate(self.evaluator, self.G_eval, self.opts.eval_samples, self.step, kimg,
                                             self.train_seconds, f"{self.opts.version} step {self.step}", writer, self.save)
        except progress.Interrupted as e:
            print(f"evaluation at step {self.step} abandoned ({e}): a stop signal arrived", file=sys.stderr, flush=True)
            return None

    def eval_due(self) -> bool:
        """A scheduled evaluation (every --eval_step and the last step): on rank 0, with an evaluator, no stop signal."""
        return self.dist.is_main and self.stops.signal is None and self.evaluator is not None and self.due(self.opts.eval_step)

    def sample(self, writer: "SummaryWriter | None" = None) -> Path:
        """The fixed-noise grid (samples/<step>_fake.png) and the attention figures, also to TensorBoard."""
        path = self.run["samples"] / f"{self.step}_fake.png"
        with private_rng(self.device):
            grid = visualize.write_sample_grid(self.G_eval, self.fixed_z, self.fixed_y, path)
            if writer:
                writer.add_image("samples", grid, self.step)
            visualize.attention_snapshot(self.G_eval, self.fixed_z, self.fixed_y, self.opts.attn_samples, self.opts.attn_points,
                                         self.run["attn"], str(self.step), writer, self.step)
        return path

    def train(self) -> None:
        """Train to --total_step: log, sample, evaluate and save on schedule; raise Preempted after a stop signal."""
        from tqdm import tqdm

        o, main = self.opts, self.dist.is_main
        writer, recorded = None, set()
        if main:
            for p in self.run.values():
                p.mkdir(parents=True, exist_ok=True)
            write_json(self.run["models"] / "training_options.json", {
                "args": o.flags, "model_config": self.cfg.to_dict(), "device": str(self.device), "world_size": self.dist.world,
                "global_batch": self.global_batch, "torch": torch.__version__, "machine": machine_info(self.device),
                "G_params": sum(p.numel() for p in self.G.parameters()), "D_params": sum(p.numel() for p in self.D.parameters())})
            recorded = self.metrics.truncate(self.step)
            if o.use_tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.run["logs"]), purge_step=self.step + 1 if self.step else None)
        self.G.train()
        self.D.train()
        bar = tqdm(total=o.total_step, initial=self.step, disable=not (sys.stderr.isatty() and main), dynamic_ncols=True)
        with self.stops:
            if self.step and self.step not in recorded and self.eval_due():
                print(f"step {self.step} is an evaluation step without a record in metrics.jsonl (a stop came first): "
                      f"evaluating it now", flush=True)
                self.evaluate(writer)
            try:  # the loader's workers start inside: they inherit the handlers, then ignore the signals
                stop = self.loop(self.batches(), writer, bar)
            except CheckpointError as e:
                e.during_stop = self.stops.signal is not None  # main.py then exits 3, as for any stop
                raise
        bar.close()
        if writer:
            writer.close()
        if stop:
            who = f"rank {self.dist.rank} of {self.dist.world}: " if self.dist.enabled else ""
            if not main:
                saved = f"rank 0 saved step {self.step}"
            elif self.last_saved is not None and self.last_saved.stem == str(self.step):
                saved = f"saved {self.last_saved}"
            else:
                saved = "no step was trained, nothing new to save"
            raise Preempted(f"{who}received {self.stops.signal or 'a stop signal on another rank'} at step {self.step}: "
                            f"{saved}; resume with --pretrained_model latest")

    def loop(self, batches: Iterator[tuple[Tensor, Tensor]], writer: "SummaryWriter | None", bar: object) -> bool:
        """The steps with their logs, samples, evaluations and saves; returns whether a stop signal ended them."""
        o, main = self.opts, self.dist.is_main
        first, t_last, step_last, last_step_saved, stop = self.step + 1, time.perf_counter(), self.step, self.step, False
        while self.step < o.total_step and not (stop := distributed.any_rank(self.dist, [self.stops.signal is not None])[0]):
            t_step = time.perf_counter()
            logs = self.iteration(batches)
            self.train_seconds += time.perf_counter() - t_step  # data and optimizer steps, not sampling or evaluation
            bar.update(1)
            if self.due(o.log_step) or self.step == first:  # the first step of this process: its time and the ETA
                now = time.perf_counter()
                s_per_step, t_last, step_last = (now - t_last) / max(self.step - step_last, 1), now, self.step
                lrs = {"lr/g": self.opt_g.param_groups[0]["lr"], "lr/d": self.opt_d.param_groups[0]["lr"]}
                line, vals = log_line(self.step, o.total_step, logs, s_per_step, self.global_batch * o.n_dis, self.G, self.D,
                                      lrs, writer if main else None)
                if main:
                    self.bad_warned = report(line, vals, bar, self.loader, self.bad_warned)
                finite = all(np.isfinite(v) for v in vals.values()) and not nonfinite(self.models())
                if distributed.any_rank(self.dist, [not finite])[0]:
                    raise FloatingPointError(f"non-finite loss or weights at step {self.step} ({line}). {resume_hint(self.last_saved)}")
            if main and self.stops.signal is None and self.due(o.sample_step):  # no new phase after a stop signal
                self.sample(writer)
            if self.eval_due():
                self.evaluate(writer)
            if self.due(o.model_save_step):
                self.save()
                last_step_saved = self.step
        if last_step_saved != self.step:  # a stop between scheduled saves: save here, still under the handlers
            self.save()
        return stop
