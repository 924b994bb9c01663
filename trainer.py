"""Training loop: losses, TTUR optimisation, samples, TensorBoard, checkpoints and resume.

One iteration (= one "step", counted in generator updates as in the paper and the official code) is
`n_dis` discriminator updates followed by one generator update:
- D update: a real batch; fakes from G under no_grad (detached, so G's backward never runs in the D
  step, unlike heykeetae #48); one spectral-norm power iteration for D; loss = d_loss(D(x, y), D(G(z), y_fake))
  (+ lambda_gp * gradient penalty for WGAN-GP, in the same step and the same optimizer update).
- G update: one power iteration for G; loss = g_loss(D(G(z), y_fake)); D's parameters are frozen.
Fake labels are drawn uniformly. Losses are small pure functions below (hinge is the paper's).

Checkpoints are one file per save, `<model_save_path>/<version>/<step>.pt`, holding G, D, both
optimizers, both LR schedulers, the step, the model config, all arguments and the RNG states; a
`latest` file names the newest. They contain only tensors and plain Python data and are loaded with
`weights_only=True`.
"""

from __future__ import annotations

import json
import os
import random
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

import spectral
from sagan_models import Discriminator, Generator, ModelConfig, SelfAttention, sample, set_attention_backend

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from metrics import Evaluator

CHECKPOINT_FORMAT = 1
DEFAULT_EVAL_SAMPLES = 10_000
NAMED_CHECKPOINTS = ("best_fid", "best_is")  # kept by --eval_step, as the paper's tables report best-FID/IS steps


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
        g_sn=args.g_sn, cbn_sn=args.cbn_sn, init=args.init,
    ).resolved()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu")
    return dev


def attention_gammas(model: nn.Module) -> dict[str, float]:
    """name -> gamma of every attention layer (works through DataParallel)."""
    model = model.module if isinstance(model, nn.DataParallel) else model
    return {name: m.gamma.item() for name, m in model.named_modules() if isinstance(m, SelfAttention)}


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def class_rows(num_classes: int, limit: int = 16) -> list[int]:
    """The classes shown as grid rows: all of them, or `limit` spread evenly over them."""
    return torch.linspace(0, num_classes - 1, min(num_classes, limit)).round().long().tolist()


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line that says what to do."""


def checkpoint_path(folder: Path, which: str) -> Path:
    """`which` is a step number, 'latest', 'best_fid' or 'best_is'."""
    steps = sorted(int(p.stem) for p in folder.glob("*.pt") if p.stem.isdigit()) if folder.is_dir() else []
    if which == "latest":
        pointer = folder / "latest"
        if pointer.is_file() and (folder / pointer.read_text().strip()).is_file():
            return folder / pointer.read_text().strip()
        if not steps:
            raise CheckpointError(f"no checkpoint in {folder}; train first, or check --version and --model_save_path")
        return folder / f"{steps[-1]}.pt"
    if which in NAMED_CHECKPOINTS:
        path = folder / f"{which}.pt"
        if not path.is_file():
            raise CheckpointError(f"no {which} checkpoint in {folder}; it is written by training with --eval_step K > 0")
        return path
    path = folder / f"{int(which)}.pt"
    if not path.is_file():
        have = ", ".join(map(str, steps)) or "none"
        raise CheckpointError(f"no checkpoint for step {int(which)} in {folder}; available steps: {have}")
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure gets the same one-line answer
        raise CheckpointError(f"cannot load {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this code (format {CHECKPOINT_FORMAT})")
    return ckpt


def check_same_model(saved: dict, current: ModelConfig, path: Path) -> None:
    cur = current.to_dict()
    diff = [k for k in sorted(set(saved) | set(cur)) if saved.get(k) != cur.get(k) and not (
        isinstance(saved.get(k), (list, tuple)) and isinstance(cur.get(k), (list, tuple)) and list(saved[k]) == list(cur[k]))]
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {cur.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path} was trained with a different model ({pairs}); pass the same flags or another --version")


# ----------------------------------------------------------------------------------------------


class Trainer:
    """Builds G, D and their optimizers from `args`; `train()` runs the loop, `sample_grid()` writes a grid."""

    def __init__(self, args: Namespace, cfg: ModelConfig, loader: DataLoader | None = None,
                 evaluator: "Evaluator | None" = None) -> None:
        self.args = args
        self.loader = loader
        self.evaluator = evaluator
        self.best = {"fid": float("inf"), "is": float("-inf")}
        self.device = resolve_device(args.device)
        seed_everything(args.seed)
        self.cfg = cfg.resolved()
        self.G = Generator(self.cfg).to(self.device)
        self.D = Discriminator(self.cfg).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=args.g_lr, betas=(args.beta1, args.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=args.d_lr, betas=(args.beta1, args.beta2))
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, args.lr_decay_step, args.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, args.lr_decay_step, args.lr_decay)
        self.d_loss_fn, self.g_loss_fn = LOSSES[args.adv_loss]
        self.step = 0
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
        self.g_train, self.d_train = self.G, self.D
        if args.parallel and self.device.type == "cuda" and torch.cuda.device_count() > 1:
            self.g_train, self.d_train = nn.DataParallel(self.G), nn.DataParallel(self.D)
        if getattr(args, "compile", False):
            # Only the training-mode calls are compiled; sampling and evaluation use the eager modules
            # (same parameters), so switching to eval mode never triggers a recompile.
            self.g_train, self.d_train = torch.compile(self.g_train), torch.compile(self.d_train)

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
        imgs = sample(self.G, self.fixed_z, self.fixed_y)
        grid = make_grid(imgs.float().cpu() * 0.5 + 0.5, nrow=8, padding=2).clamp(0, 1)
        path = path or self.run["samples"] / f"{self.step}_fake.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        return path, grid

    def attention_snapshot(self, writer: "SummaryWriter | None" = None) -> list[Path]:
        """Attention figures for the first --attn_samples fixed samples (one per class row when
        conditional) into attn/<version>/<step>_attn<k>.png, and TensorBoard."""
        import visualize

        n = getattr(self.args, "attn_samples", 0)
        if not n or not visualize.attention_layers(self.G):
            return []
        per_row = 8
        idx = (torch.arange(n) * per_row) % len(self.fixed_z)
        y = self.fixed_y[idx] if self.fixed_y is not None else None
        points = visualize.parse_points(getattr(self.args, "attn_points", None), self.cfg.imsize)
        figs = visualize.attention_figures(self.G, self.fixed_z[idx], y, points)
        paths = visualize.save_figures(figs, self.run["attn"], str(self.step))
        if writer:
            for k, fig in enumerate(figs):
                writer.add_image(f"attention/{k}", np.asarray(fig), self.step, dataformats="HWC")
        return paths

    # -- checkpoints -----------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model_config": self.cfg.to_dict(),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.args).items()},
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
        }

    def save(self, name: str | None = None) -> Path:
        """Write `<step>.pt` (or `<name>.pt`) via a temporary file and an atomic rename; a step checkpoint
        then becomes `latest`."""
        folder = self.run["models"]
        folder.mkdir(parents=True, exist_ok=True)
        stem = name or str(self.step)
        path = folder / f"{stem}.pt"
        tmp = folder / f".{stem}.pt.tmp"
        with open(tmp, "wb") as f:
            torch.save(self.state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if name is None:
            pointer_tmp = folder / ".latest.tmp"
            pointer_tmp.write_text(path.name + "\n")
            os.replace(pointer_tmp, folder / "latest")
        return path

    def load(self, which: str, restore_training: bool = True) -> Path:
        path = checkpoint_path(self.run["models"], which)
        ckpt = load_checkpoint(path)
        check_same_model(ckpt["model_config"], self.cfg, path)
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.step = int(ckpt["step"])
        if restore_training:
            self.opt_g.load_state_dict(ckpt["opt_g"])
            self.opt_d.load_state_dict(ckpt["opt_d"])
            self.sched_g.load_state_dict(ckpt["sched_g"])
            self.sched_d.load_state_dict(ckpt["sched_d"])
            set_rng_state(ckpt["rng"])
            self.best.update(ckpt.get("best", {}))
        return path

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, writer: "SummaryWriter | None" = None) -> dict:
        """Score G with the evaluator, append to metrics.jsonl, log to TensorBoard, keep best_fid/best_is."""
        from metrics import append_jsonl, tensorboard_scalars

        t0 = time.perf_counter()
        n = self.args.eval_samples or DEFAULT_EVAL_SAMPLES
        result = self.evaluator(self.G, n, source=f"{self.args.version} step {self.step}")
        m = result["metrics"]
        scalars = tensorboard_scalars(m)
        record = {"step": self.step, "kimg": self.step * self.args.batch_size * self.args.n_dis / 1000,
                  "seconds": round(time.perf_counter() - t0, 3), **m}
        append_jsonl(self.run["models"] / "metrics.jsonl", record)
        if writer:
            for k, v in scalars.items():
                writer.add_scalar(k, v, self.step)
        if m["fid"] < self.best["fid"]:
            self.best["fid"] = m["fid"]
            self.save("best_fid")
        if m["is_10splits"] > self.best["is"]:
            self.best["is"] = m["is_10splits"]
            self.save("best_is")
        print(" ".join([f"eval step {self.step}:"] + [f"{k.split('/')[1]} {v:.4f}" for k, v in scalars.items()]
                       + [f"({record['seconds']:.0f} s)"]), flush=True)
        return record

    # -- training --------------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def autocast(self) -> torch.autocast:
        """Mixed precision for the forward passes (--amp); a no-op context when off."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def d_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        a = self.args
        if a.flip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        x = x.contiguous(memory_format=self.memory_format)
        y_real = y if self.cfg.num_classes else None
        spectral.power_iteration(self.D)  # fp32, outside autocast
        with torch.no_grad(), self.autocast():
            y_fake = self.sample_labels(x.shape[0])
            fake = self.g_train(torch.randn(x.shape[0], self.cfg.z_dim, device=self.device), y_fake)
        with self.autocast():
            d_real = self.d_train(x, y_real).float()
            d_fake = self.d_train(fake, y_fake).float()
        loss = self.d_loss_fn(d_real, d_fake)
        out = {"loss/d": loss, "d/real": d_real.mean(), "d/fake": d_fake.mean()}
        if a.adv_loss == "wgan-gp":
            gp = gradient_penalty(self.d_train, x, fake.float(), y_real)  # in fp32
            loss = loss + a.lambda_gp * gp
            out["loss/gp"] = gp
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        return out

    def g_step(self) -> dict[str, Tensor]:
        b = self.args.batch_size
        spectral.power_iteration(self.G)
        self.D.requires_grad_(False)
        y_fake = self.sample_labels(b)
        with self.autocast():
            fake = self.g_train(torch.randn(b, self.cfg.z_dim, device=self.device), y_fake)
            loss = self.g_loss_fn(self.d_train(fake, y_fake).float())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.D.requires_grad_(True)
        return {"loss/g": loss}

    def train(self) -> None:
        from tqdm import tqdm

        a = self.args
        for p in self.run.values():
            p.mkdir(parents=True, exist_ok=True)
        options = {"args": vars(a), "model_config": self.cfg.to_dict(), "device": str(self.device),
                   "torch": torch.__version__, "G_params": sum(p.numel() for p in self.G.parameters()),
                   "D_params": sum(p.numel() for p in self.D.parameters())}
        write_json_atomic(self.run["models"] / "training_options.json", options)
        writer = None
        if a.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run["logs"]), purge_step=self.step + 1 if self.step else None)
        self.G.train()
        self.D.train()
        batches = self.batches()
        interactive = sys.stderr.isatty()
        bar = tqdm(total=a.total_step, initial=self.step, disable=not interactive, dynamic_ncols=True)
        t_last, step_last = time.perf_counter(), self.step
        last_saved = self.step
        while self.step < a.total_step:
            for _ in range(a.n_dis):
                logs = self.d_step(*next(batches))
            logs.update(self.g_step())
            self.sched_g.step()
            self.sched_d.step()
            self.step += 1
            bar.update(1)
            if self.step % a.log_step == 0 or self.step == a.total_step:
                now = time.perf_counter()
                ips = (self.step - step_last) * a.batch_size * a.n_dis / max(now - t_last, 1e-9)
                t_last, step_last = now, self.step
                vals = {k: v.item() for k, v in logs.items()}  # the only host sync of the step
                gam = {f"gamma/G.{k}": v for k, v in attention_gammas(self.G).items()}
                gam.update({f"gamma/D.{k}": v for k, v in attention_gammas(self.D).items()})
                lrs = {"lr/g": self.opt_g.param_groups[0]["lr"], "lr/d": self.opt_d.param_groups[0]["lr"]}
                if writer:
                    for k, v in {**vals, **gam, **lrs, "speed/img_per_s": ips}.items():
                        writer.add_scalar(k, v, self.step)
                eta = (a.total_step - self.step) * a.batch_size * a.n_dis / max(ips, 1e-9)
                gtxt = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in gam.items())
                line = (f"step {self.step}/{a.total_step} d_loss {vals['loss/d']:.4f} g_loss {vals['loss/g']:.4f} "
                        f"D(x) {vals['d/real']:.3f} D(G(z)) {vals['d/fake']:.3f} {gtxt} {ips:.1f} img/s eta {eta / 60:.1f} min")
                if interactive:
                    bar.set_postfix_str(f"d {vals['loss/d']:.3f} g {vals['loss/g']:.3f}")
                else:
                    print(line, flush=True)
                if not all(np.isfinite(v) for v in vals.values()):
                    raise FloatingPointError(
                        f"non-finite loss at step {self.step} ({line}); resume from the last checkpoint "
                        f"with a lower --d_lr/--g_lr")
            if self.step % a.sample_step == 0 or self.step == a.total_step:
                _, grid = self.sample_grid()
                if writer:
                    writer.add_image("samples", grid, self.step)
                self.attention_snapshot(writer)
            if self.evaluator is not None and a.eval_step and (self.step % a.eval_step == 0 or self.step == a.total_step):
                self.evaluate(writer)
            if self.step % a.model_save_step == 0 or self.step == a.total_step:
                self.save()
                last_saved = self.step
        bar.close()
        if writer:
            writer.close()
        if last_saved != self.step:
            self.save()
