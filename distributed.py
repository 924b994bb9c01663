"""The torchrun environment: one process per GPU (NCCL) or per CPU worker (Gloo).

`torchrun --nproc_per_node N main.py ...` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT for every process; `launch_env` reads and checks them (an inconsistent environment is one
clear error line, not a hang in `init_process_group`), and `init` starts the process group. Without
torchrun (or with WORLD_SIZE=1) everything here is a no-op, so the same code runs in one process.

Conventions (documented in docs/training.md): `--batch_size` is per process; the global batch per optimizer
step is batch_size x accum x WORLD_SIZE, printed at start. Rank 0 alone writes files and logs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 evaluates and saves while the others wait in their next collective: allow for a long evaluation.
TIMEOUT = timedelta(minutes=120)
_control = None  # the process group of the small CPU flag all-reduces (any_rank); None: the default group


class LaunchError(Exception):
    """An inconsistent launch environment; the message is one line that says what to do."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ: "os._Environ[str] | dict[str, str] | None" = None) -> DistEnv:
    """Read torchrun's variables; a single process when none is set."""
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_VARS if k in env]
    if not present or (present == ["WORLD_SIZE"] and env["WORLD_SIZE"] == "1"):
        return DistEnv()
    missing = [k for k in TORCHRUN_VARS if k not in env]
    if missing:
        raise LaunchError(f"incomplete torchrun environment: {', '.join(present)} set but {', '.join(missing)} missing; "
                          f"launch with: torchrun --nproc_per_node N main.py ...")
    try:
        rank, local_rank, world = int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        raise LaunchError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, got {env['RANK']!r}, "
                          f"{env['LOCAL_RANK']!r}, {env['WORLD_SIZE']!r}; launch with torchrun")
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank <= rank:
        raise LaunchError(f"inconsistent torchrun environment: RANK {rank}, LOCAL_RANK {local_rank}, WORLD_SIZE {world}; "
                          f"launch with torchrun rather than setting these by hand")
    return DistEnv(rank, local_rank, world)


def device_for(env: DistEnv, name: str) -> torch.device:
    """The device of this process: --device auto/cuda -> cuda:LOCAL_RANK under torchrun; cpu -> cpu."""
    if not env.enabled:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu")
        return dev
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise LaunchError(f"under torchrun every process uses cuda:LOCAL_RANK; pass --device cuda (or auto, or cpu), not {name}")
    if not torch.cuda.is_available():
        raise LaunchError("--device cuda under torchrun, but no CUDA device is available; pass --device cpu to use Gloo")
    if env.local_rank >= torch.cuda.device_count():
        raise LaunchError(f"LOCAL_RANK {env.local_rank}, but only {torch.cuda.device_count()} CUDA devices are visible; "
                          f"use --nproc_per_node {torch.cuda.device_count()} or fewer per node")
    return torch.device("cuda", env.local_rank)


def resolve_device(name: str) -> torch.device:
    """--device for one process outside torchrun (auto: CUDA when available)."""
    return device_for(DistEnv(), name)


def init(env: DistEnv, device: torch.device) -> None:
    """Start the process group (NCCL on CUDA, Gloo on the CPU); a no-op for one process."""
    if not env.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    global _control
    _control = dist.new_group(backend="gloo", timeout=TIMEOUT) if device.type == "cuda" else None


def shutdown() -> None:
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def gather_objects(env: DistEnv, obj: object) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] for one process. Objects travel as
    torch.save bytes and are read back with weights_only=True (tensors and plain data only)."""
    if not env.enabled:
        return [obj]
    buf = io.BytesIO()
    torch.save(obj, buf)
    out: list = [None] * env.world
    dist.all_gather_object(out, buf.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def any_rank(env: DistEnv, flags: list[bool]) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks: one small all-reduce of a CPU tensor over Gloo
    (the default group on the CPU, a Gloo side group beside NCCL), so it never waits for the GPU."""
    if not env.enabled:
        return list(flags)
    t = torch.tensor([float(f) for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return [bool(v) for v in t.tolist()]
