"""Checkpoints in this code's own format: paths, durable writes, loading, the model-config check,
`latest`, pruning, and `load_generator` for sampling without a Trainer.

One file per save, `<model_save_path>/<version>/<step>.pt`, a dict holding G, D, the EMA
generator, both optimizers, both LR schedulers, the gradient scaler, the step, the data position, the
model config, all arguments, the RNG states of every process and, for a converted checkpoint, its
`source` (files, SHA-256, format). A `latest` file names the newest step checkpoint. Files hold only
tensors and plain Python data and are loaded with `weights_only=True`. Every write goes through
`durable.write_durably` (temporary file, fsync, rename, fsync of the folder), so a kill at any moment
leaves the previous checkpoint loadable.

The references' formats (StudioGAN, MMGeneration/mmagic, heykeetae) are read by legacy.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from durable import why_not_written, write_durably, write_text
from sagan_models import Discriminator, Generator, ModelConfig

CHECKPOINT_FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used or written; the message is one line that says what to do."""


# ----------------------------------------------------------------------------------------------
# Our format: paths, atomic writes, loading


def step_numbers(folder: Path) -> list[int]:
    """The steps of the step checkpoints `<step>.pt` in `folder`, ascending."""
    return sorted(int(p.stem) for p in folder.glob("*.pt") if p.stem.isdigit()) if folder.is_dir() else []


def checkpoint_path(folder: Path, which: str) -> Path:
    """`which` is a step number, 'latest', or a best checkpoint `best_<metric>` (parameter.NAMED_CHECKPOINTS)."""
    steps = step_numbers(folder)
    if which == "latest":
        pointer = folder / "latest"
        if pointer.is_file():
            try:
                name = pointer.read_text().strip()
            except (OSError, UnicodeDecodeError):
                name = "(unreadable)"
            if re.fullmatch(r"\d+\.pt", name) and (folder / name).is_file():
                return folder / name
            have = ", ".join(map(str, steps)) or "none"
            raise CheckpointError(f"{pointer} is corrupt: it names {name[:40]!r}, which is not a checkpoint in {folder}; pass "
                                  f"--pretrained_model STEP with one of the steps there ({have}); the next save rewrites it")
        if not steps:
            raise CheckpointError(f"no checkpoint in {folder}; train first, or check --version and --model_save_path")
        return folder / f"{steps[-1]}.pt"
    if which.startswith("best_"):
        path = folder / f"{which}.pt"
        if not path.is_file():
            raise CheckpointError(f"no {which} checkpoint in {folder}; it is written by training with --eval_step K > 0")
        return path
    path = folder / f"{int(which)}.pt"
    if not path.is_file():
        have = ", ".join(map(str, steps)) or "none"
        raise CheckpointError(f"no checkpoint for step {int(which)} in {folder}; available steps: {have}")
    return path


def write_checkpoint(state: dict, folder: Path, stem: str, point_latest: bool, previous: Path | None) -> Path:
    """Write `state` to `folder/<stem>.pt` atomically; with `point_latest`, then make it `latest`.

    A failed write removes its temporary files, leaves `previous` and `latest` as they were, and
    raises CheckpointError with one line that says so (a full disk is named as such)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.pt"
    try:
        write_durably(path, lambda f: torch.save(state, f))
        if point_latest:
            write_text(folder / "latest", path.name + "\n")
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError ("file write failed")
        if isinstance(e, RuntimeError) and not write_failed(e):
            raise
        kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write {path}: {why_not_written(e, folder)}; {kept}; free space and resume with "
                              f"--pretrained_model latest") from e
    return path


def write_failed(e: BaseException) -> bool:
    """Whether an exception is a failed file write (a full disk, a quota, an I/O error), OSError or torch's RuntimeError."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return "write failed" in text or "no space" in text or "unexpected pos" in text


def _missing_parents(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    out, p = [], folder
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


class RunLock:
    """An exclusive lock on a run folder (`<folder>/.lock`, flock): a second training run on the same
    --version is refused instead of interleaving checkpoints. The kernel releases it when the process
    ends, however it ends, so a killed run never leaves a stale lock. Folders that the lock created are
    removed again when nothing else was written into them."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.fd, self.created = folder, None, _missing_parents(folder)

    def __enter__(self) -> "RunLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(f"{self.folder} is in use by another training run ({holder}); wait for it to end, "
                                  f"or pass another --version") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        if self.created and [p.name for p in self.folder.iterdir()] == [".lock"]:
            (self.folder / ".lock").unlink()
            for p in self.created:
                try:
                    p.rmdir()
                except OSError:
                    break
        os.close(self.fd)  # closing releases the lock
        self.fd = None


def check_writable(folder: Path, flag: str) -> None:
    """Fail early, with one line, when files cannot be written into `folder` (created later, if missing):
    a probe file is written into it, or into its deepest existing parent, and removed."""
    missing = _missing_parents(folder)
    base = missing[-1].parent if missing else folder
    try:
        if not base.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{base} is not a folder")
        probe = base / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"cannot write to {folder} ({e.strerror or e}); pass a writable {flag}") from None


def prune(folder: Path, keep: int) -> None:
    """Keep the `keep` most recently written step checkpoints (0 keeps all). Order is write order (the
    files' modification times), not step number: after a resume from an earlier step, the new files are
    the newest whatever their steps. The file `latest` names is never removed, nor are best_* files.
    Pruning runs only after a save, so a run's own new checkpoint always exists before anything goes."""
    if not keep:
        return
    pointer = folder / "latest"
    try:
        named = pointer.read_text().strip() if pointer.is_file() else ""
    except (OSError, UnicodeDecodeError):
        named = ""
    files = []
    for s in step_numbers(folder):
        try:
            files.append((os.stat(folder / f"{s}.pt").st_mtime_ns, s))
        except FileNotFoundError:
            continue
    for _, s in sorted(files)[:-keep]:
        if f"{s}.pt" != named:
            (folder / f"{s}.pt").unlink(missing_ok=True)


@contextlib.contextmanager
def allowed_globals(stand_ins: list) -> Iterator[None]:
    """torch.serialization.safe_globals, which torch 2.4 lacks: there the list is extended, then put back."""
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(stand_ins):
            yield
        return
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(stand_ins)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def torch_load(path: Path, stand_ins: list | None = None) -> Any:
    """torch.load(weights_only=True), with `stand_ins` allow-listed; failures become one CheckpointError line.
    A FIFO, device or other non-regular file is refused before it is opened (opening a FIFO blocks)."""
    kind = file_kind(path)
    if kind not in ("file", "missing", "folder"):
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file; pass a regular file")
    if kind == "file" and path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a write was cut off or the file was truncated; pick another checkpoint")
    try:
        with allowed_globals(stand_ins or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)|reduce for ([\w.<>]+)", str(e))
        if found or "GLOBAL" in str(e):
            what = f" ({found.group(1) or found.group(2)})" if found else ""
            raise CheckpointError(f"refused to load {path}: it holds objects that this code does not load{what}; use a file "
                                  f"written by this code or by a supported reference") from e
        raise CheckpointError(f"cannot load {path}: it is damaged or not a checkpoint; pick another file") from e
    except FileNotFoundError as e:
        raise CheckpointError(f"no such file: {path}") from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from e
    except Exception as e:  # noqa: BLE001 - any other failure (truncated, not a torch file) gets one line
        raise CheckpointError(f"cannot load {path}: {str(e).splitlines()[0]}; it is damaged or not a checkpoint, "
                              f"pick another file") from e


def file_kind(path: Path) -> str:
    """'file', 'folder', 'missing', or what else the path is (a FIFO, a socket, a device), without opening it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:  # a symlink loop, a name too long
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(mode), "not a regular file")


def load_checkpoint(path: Path) -> dict:
    """One of our checkpoints (plain data only; nothing is allow-listed beyond torch's defaults)."""
    ckpt = torch_load(path)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by a newer version of this code (checkpoint format {fmt}; this code "
                              f"reads format {CHECKPOINT_FORMAT}); update it (git pull) to load this file")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this code (format {CHECKPOINT_FORMAT}); "
                              f"a StudioGAN, MMGeneration/mmagic or heykeetae file is converted with convert.py")
    missing = [k for k in ("step", "model_config", "G", "D") if not isinstance(ckpt.get(k), (dict, int)) or isinstance(ckpt.get(k), bool)]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it has no {', '.join(missing)}; it was edited or cut short, pick another checkpoint")
    return ckpt


def check_same_model(saved: dict, current: ModelConfig, path: Path) -> None:
    saved = {**ModelConfig().to_dict(), **saved}  # keys added later take their defaults
    cur = current.to_dict()
    diff = [k for k in sorted(set(saved) | set(cur)) if saved.get(k) != cur.get(k) and not (
        isinstance(saved.get(k), (list, tuple)) and isinstance(cur.get(k), (list, tuple)) and list(saved[k]) == list(cur[k]))]
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {cur.get(k)!r}" for k in diff)
        raise CheckpointError(f"{path} was trained with a different model ({pairs}); pass the same flags or another --version")


def load_part(path: Path, name: str, model: nn.Module, state: dict) -> None:
    """model.load_state_dict(state), with a mismatch as one CheckpointError line."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: its {name} weights do not fit the model its own config describes "
                              f"({str(e).splitlines()[0].rstrip(':')}); the file is inconsistent (edited, or G and D "
                              f"swapped): pick another checkpoint") from None


@dataclass
class LoadedGenerator:
    """What `load_generator` returns: the sampling G and where it came from."""

    G: nn.Module  # in eval mode, without gradients: the EMA generator when the checkpoint has one
    config: ModelConfig
    step: int
    path: Path
    ema: bool  # whether G holds the EMA weights
    flags: dict  # the flags the run was trained (or converted) with
    source: dict | None  # a converted checkpoint's origin


# ----------------------------------------------------------------------------------------------
# Exported folders (export.py): model.safetensors and config.json, the layout the Hugging Face Hub expects

EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"
HUB_PREFIX = "hf://"


def is_export(ref: str | Path) -> bool:
    """Whether `ref` names an exported folder or a Hub repository rather than a checkpoint of a run folder."""
    return str(ref).startswith(HUB_PREFIX) or (Path(ref) / EXPORT_WEIGHTS).is_file()


def from_hub(ref: str, names: Callable[[str, str, str | None], list[str]], form: str, min_parts: int = 2) -> list[Path]:
    """Local copies (huggingface_hub's cache) of files of hf://USER/REPO[/PATH][@REVISION]: `names(repo, path,
    revision)` says which files of the repository; a missing package, no network or no such file is one line."""
    spec, _, revision = ref[len(HUB_PREFIX):].partition("@")
    parts = spec.strip("/").split("/")
    if len(parts) < min_parts:
        raise CheckpointError(f"{ref}: {form}")
    repo, path, rev = "/".join(parts[:2]), "/".join(parts[2:]), revision or None
    try:
        from huggingface_hub import hf_hub_download

        return [Path(hf_hub_download(repo, name, revision=rev)) for name in names(repo, path, rev)]
    except ImportError as e:
        raise CheckpointError("the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from e
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - no network, no such repository or file: one line
        raise CheckpointError(f"could not fetch {ref} from the Hugging Face Hub: {str(e).splitlines()[0]}") from e


def hub_folder(ref: str) -> Path:
    """hf://USER/REPO[/SUBFOLDER][@REVISION] -> the local folder holding its model.safetensors and config.json
    (the only step that needs the network)."""
    files = from_hub(ref, lambda repo, sub, rev: [f"{sub}/{n}" if sub else n for n in (EXPORT_CONFIG, EXPORT_WEIGHTS)],
                     "a Hub model is named hf://USER/REPO (optionally /SUBFOLDER and @REVISION)")
    return files[-1].parent


def load_export(folder: Path) -> dict:
    """An exported folder as a checkpoint dict of ours (weights, config, flags, step; no optimizer states).
    The weights are read by safetensors, which runs no code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = folder / EXPORT_WEIGHTS, folder / EXPORT_CONFIG
    try:
        meta = json.loads(config.read_text())
        tensors = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{folder} is not a complete export ({EXPORT_WEIGHTS} and {EXPORT_CONFIG}): "
                              f"{str(e).splitlines()[0]}; export it again with export.py") from e
    if meta.get("format") != "sagan-export" or "model_config" not in meta:
        raise CheckpointError(f"{config} was not written by export.py (no sagan-export format and model_config)")
    parts: dict[str, dict] = {"G": {}, "D": {}, "G_ema": {}}
    for key, t in tensors.items():
        part, _, name = key.partition(".")
        if part not in parts:
            raise CheckpointError(f"{weights} holds {key!r}, which is not a G, G_ema or D tensor; export it again")
        parts[part][name] = t
    return {"format": CHECKPOINT_FORMAT, "step": int(meta.get("step", 0)), "model_config": meta["model_config"],
            "args": meta.get("flags", {}), "G": parts["G"], "D": parts["D"], "G_ema": parts["G_ema"] or None,
            "source": meta.get("source"), "export": str(folder)}


def open_weights(folder: str | Path, which: str = "latest") -> tuple[Path, dict]:
    """(file, checkpoint dict) for `which` in a run folder, or for an exported folder or hf:// repository named by
    `which` or by `folder` itself."""
    ref = which if is_export(which) else folder
    if is_export(ref):
        local = hub_folder(str(ref)) if str(ref).startswith(HUB_PREFIX) else Path(ref)
        return local / EXPORT_WEIGHTS, load_export(local)
    path = checkpoint_path(Path(folder), str(which))
    return path, load_checkpoint(path)


def generator_from(path: Path, ckpt: dict, device: str | torch.device = "cpu") -> LoadedGenerator:
    """The sampling G of a loaded checkpoint dict (`open_weights`): the EMA weights when saved."""
    cfg = ModelConfig.from_dict(ckpt["model_config"]).resolved()
    G = Generator(cfg)
    load_part(path, "G", G, ckpt["G"])
    ema = ckpt.get("G_ema") is not None
    if ema:
        load_part(path, "G_ema", G, ckpt["G_ema"])
    return LoadedGenerator(G.to(device).eval().requires_grad_(False), cfg, int(ckpt["step"]), path, ema,
                           ckpt.get("args", {}), ckpt.get("source"))


def discriminator_from(path: Path, ckpt: dict, device: str | torch.device = "cpu") -> nn.Module:
    """D of a loaded checkpoint dict, in eval mode, without gradients."""
    if not ckpt.get("D"):
        raise CheckpointError(f"{path} holds no discriminator weights; this needs D, so use the run's own checkpoint")
    D = Discriminator(ModelConfig.from_dict(ckpt["model_config"]).resolved())
    load_part(path, "D", D, ckpt["D"])
    return D.to(device).eval().requires_grad_(False)


def load_generator(folder: str | Path, which: str = "latest", device: str | torch.device = "cpu") -> LoadedGenerator:
    """The generator for sampling, with no Trainer, optimizer or dataset, from a run folder
    (`<model_save_path>/<version>`; `which` is 'latest', a step or a best checkpoint), an exported folder, or
    a Hub repository (hf://USER/REPO): the EMA weights when saved."""
    return generator_from(*open_weights(folder, str(which)), device)


def load_discriminator(folder: str | Path, which: str = "latest", device: str | torch.device = "cpu") -> nn.Module:
    """D of a run folder, an exported folder or a Hub repository, in eval mode, without gradients."""
    return discriminator_from(*open_weights(folder, str(which)), device)
