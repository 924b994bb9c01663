"""Time full SAGAN training iterations (n_dis D steps + one G step) for any configuration main.py accepts.

    python bench.py --arch dcgan --attn_variant paper --imsize 64 --batch_size 64 --g_attn 16,32 --d_attn 8,4
    python bench.py <same flags> --compare "math:--attn_backend math|sdpa:--attn_backend sdpa|sdpa+cl:--channels_last true"

Each variant is the base flags plus its own; all variants run in this one process, one after another,
on the same device. Per variant: `--warmup` iterations (compilation included), then `--iters` timed
ones. Printed: median seconds per iteration, images per second (real images through D per second, as
the training log counts them), peak memory during the timed iterations (RSS high-water mark on the
CPU, reset through /proc/self/clear_refs after `malloc_trim`, so memory freed by an earlier variant
does not count; max allocated on a GPU), model FLOPs per iteration counted
by `torch.utils.flop_counter.FlopCounterMode` over one eager fp32 iteration with the math attention
backend (the same work whatever the backend, AMP or compile; matmuls and convolutions, forward and
backward; counted per variant, since a variant may change the model), the
achieved FLOP/s, and that as a fraction of a dense matmul measured on the same device in the same run
(fp32, or the AMP dtype on a GPU). Ratios are against the first variant.

Real images are a fixed random batch on the device, so data loading is not timed; the optimizer
steps, spectral-norm power iterations and label sampling are.

    python bench.py --time_to_acc 300 --preset fmnist_32 --compare "base:|bs64:--batch_size 64"

`--time_to_acc SECONDS` measures time to quality instead, for labelled datasets with the classifier
metric (`classifier.py`): each variant trains through the real loader and `Trainer.iteration` (data
loading timed) for at most SECONDS of training, and every `--acc_every` steps the class accuracy of
`--acc_samples` conditional samples of the sampling G (the EMA one with --ema) is measured, with that
time left off the clock. Printed: median seconds per step, and the training seconds (and step) at
which the accuracy first reached 50%, 75% and 85%.

Data loading, on its own:

    python bench.py --make_jpegs jpegs --n 2000      # synthetic ImageNet-sized JPEGs (350-500 px, mixed aspect ratios)
    python bench.py --loader jpegs --imsize 128 --num_workers 2 [--full_decode | --data_cache FOLDER]
    python bench.py --decode_paths jpegs --n 300 --imsize 128

`--loader FOLDER` times the training loader (`data_loader.get_loader`, `--dataset folder`) over the
folder in its steady state, epoch after epoch: the batches the workers may hold in flight (workers x 4) and
one more start them and are drained first, then eight times that many (at least 8) are timed. Printed: images per
second in total and per worker, milliseconds per image per core (workers x elapsed / images; the
main process itself with 0 workers), the CPU time per image of the main process and its workers
(from /proc, so other load on the machine does not inflate it); and, unless `--full_decode`, the PSNR of the reduced-size decode
against the full one after the same crop and resize. With `--data_cache`, the cache is built (or found) before
the clock starts, and the loader reads from it.

`--decode_paths FOLDER` times each way a JPEG becomes a training tensor on its own, in this process with one
thread (CPU time, median of 3 passes over the first `--n` images): the previous path, the full decode with
`SquareResize`, the reduced-size decode, and a read from the decoded-image cache; ratios against the first.

`--save_time N` times what a stop signal costs at the end: N writes of the full checkpoint (G, D, EMA,
both Adam states) of the model the flags build, e.g. `python bench.py --save_time 3 --preset sagan_imagenet_128`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import math
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from parameter import get_parameters
from sagan_models import count_params, set_attention_backend
from data_loader import dataset_info
from distributed import resolve_device
from parameter import data_spec, model_config, train_options
from trainer import Trainer, cpu_bf16_units


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # hand freed heap memory back to the OS, so that RSS is what is in use now
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) on Linux
        except OSError:
            pass


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Dense bf16 peaks (TFLOP/s, without sparsity) of the devices we know, by a substring of their name.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "A100": 312.0}


def bf16_peak(name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s where known (NVIDIA's data sheets), else None."""
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, sizes: Sequence[int] | None = None, reps: int = 10) -> float:
    """The best median rate over square matmuls of each size (2 n^3 FLOPs). On CUDA: 4096^3 and 8192^3,
    timed with CUDA events (a 2048^3 product takes about as long as a launch and a sync on an H100, so it
    reads low); fp32 with TF32 off, so that fp32 variants are compared with true fp32. On the CPU: 2048^3."""
    from metrics import no_tf32

    cuda = device.type == "cuda"
    best = 0.0
    for n in sizes or ((4096, 8192) if cuda else (2048,)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        with no_tf32():
            for _ in range(2):
                a @ b
            times = []
            for _ in range(reps):
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    a @ b
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) / 1000)
                else:
                    t = time.perf_counter()
                    a @ b
                    times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times))
        del a, b
    return best


def run_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    """The dtype a variant's matmuls run in: its AMP dtype on a GPU, else fp32."""
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)


def tf32_flags() -> str:
    return (f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32} "
            f"(float32 matmul precision {torch.get_float32_matmul_precision()})")


def make_trainer(argv: Sequence[str], num_classes: int) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    args = get_parameters(list(argv) + ["--use_tensorboard", "false"])
    cfg = model_config(args, num_classes)
    trainer = Trainer(train_options(args), cfg)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch_size, 3, cfg.imsize, cfg.imsize, generator=g) * 2 - 1).to(trainer.device)
    y = torch.randint(0, max(num_classes, 1), (args.batch_size,), generator=g).to(trainer.device)
    return trainer, x, y


def iteration(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training iteration, exactly as Trainer.train runs it, on a fixed real batch."""
    trainer.iteration(itertools.repeat((x, y)))


def count_flops(argv: Sequence[str], num_classes: int) -> int:
    """FLOPs of one eager fp32 iteration with the math attention backend, at argv's --batch_size."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer, x, y = make_trainer(list(argv) + ["--amp", "off", "--compile", "false"], num_classes)
    set_attention_backend(trainer.G, "math")
    set_attention_backend(trainer.D, "math")
    with FlopCounterMode(display=False) as counter:
        iteration(trainer, x, y)
    return counter.get_total_flops()


def flops_at_batch(argv: Sequence[str], num_classes: int, batch: int) -> int:
    """count_flops at `batch`, from one count at batch 2: the counted work is linear in the batch
    (tests/test_speed.py checks the result against a direct count), and a small iteration costs seconds where one
    at the bench's batch is a full fp32 iteration under the counter. A packed D (--d_pack) is counted at `batch`
    itself: packs of one label leave some images out of each update, so its work is not linear in the batch."""
    if get_parameters(list(argv)).d_pack > 1:
        return count_flops(list(argv) + ["--batch_size", str(batch)], num_classes)
    return count_flops(list(argv) + ["--batch_size", "2"], num_classes) * batch // 2


def bench_variant(argv: Sequence[str], num_classes: int, warmup: int, iters: int) -> dict:
    trainer, x, y = make_trainer(argv, num_classes)
    device = trainer.device
    for _ in range(warmup):
        iteration(trainer, x, y)
    sync(device)
    gc.collect()
    reset_peak(device)
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        iteration(trainer, x, y)
        sync(device)
        times.append(time.perf_counter() - t)
    a = trainer.opts
    med = statistics.median(times)
    return {"s_per_iter": med, "img_per_s": trainer.global_batch * a.n_dis / med, "peak_bytes": peak_bytes(device),
            "times": times, "device": str(device)}


def write_bench_json(path: str | None, device_name: str, rates: dict, peak: float | None, base: Sequence[str],
                     results: list[dict]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"device": device_name, "torch": torch.__version__, "bf16_peak": peak, "base": list(base),
                       "matmul_flops_per_s": {str(k): v for k, v in rates.items()}, "results": results}, f, indent=2)


def preset_hours(rate_tflops: float, names: Sequence[str]) -> list[dict]:
    """Expected GPU hours of each preset's full run: FLOPs of one iteration counted at batch 2 (work is
    linear in the batch, see BENCHMARKS.md), scaled to the preset's global batch and --total_step, divided
    by an assumed sustained rate. An estimate, not a measurement."""

    rows = []
    for name in names:
        args = get_parameters(["--preset", name])
        per_iter = flops_at_batch(["--preset", name, "--ema", "false", "--device", "cpu"], dataset_info(args.dataset).num_classes or 0,
                                  args.global_batch)
        total = per_iter * args.total_step
        rows.append({"preset": name, "gflop_per_iter": per_iter / 1e9, "total_pflop": total / 1e15,
                     "gpu_hours": total / (rate_tflops * 1e12) / 3600})
    return rows


def time_to_accuracy(argv: Sequence[str], budget_s: float, every: int, n_samples: int,
                     targets: Sequence[float] = (0.5, 0.75, 0.85)) -> dict:
    """Train one variant on its real data for up to `budget_s` seconds (evaluation excluded), checking the
    classifier metric's class accuracy every `every` steps; stops early once the last target is reached."""
    from data_loader import build_dataset, get_loader
    from main import build_evaluator

    args = get_parameters(list(argv) + ["--eval_metric", "classifier"])
    device = resolve_device(args.device)
    dataset, classes = build_dataset(data_spec(args))
    trainer = Trainer(train_options(args), model_config(args, classes),
                      get_loader(dataset, device, args.batch_size, args.seed, args.num_workers))
    evaluator = None  # built at the first check, so that speed-only runs (--acc_every > steps) need no test split
    batches = trainer.batches()
    trainer.G.train()
    trainer.D.train()
    train_s, step_s, curve, reached = 0.0, [], [], {}
    while train_s < budget_s:
        t0 = time.perf_counter()
        trainer.iteration(batches)
        sync(device)
        step_s.append(time.perf_counter() - t0)
        train_s += step_s[-1]
        if trainer.step % every == 0:
            evaluator = evaluator or build_evaluator(args, device, dataset)
            acc = evaluator.class_accuracy(trainer.G_eval, n_samples)
            curve.append((trainer.step, round(train_s, 1), acc))
            print(f"  step {trainer.step} ({train_s:.0f} s of training): class accuracy {acc:.1%}", flush=True)
            for t in targets:
                if acc >= t and t not in reached:
                    reached[t] = (round(train_s), trainer.step)
            if len(reached) == len(targets):
                break
    return {"s_per_step": statistics.median(step_s), "steps": trainer.step, "train_s": round(train_s),
            "reached": {f"{t:.0%}": reached.get(t) for t in targets}, "curve": curve,
            "final_acc": curve[-1][2] if curve else float("nan")}


def save_time(argv: Sequence[str], n: int) -> dict:
    """Median wall time of `Trainer.save()` for the model the flags build, with Adam's moments filled in as
    after the first step (the checkpoint's real size), written into --model_save_path/--version."""
    import tempfile
    from pathlib import Path


    args = get_parameters(list(argv) + ["--device", "cpu"])
    if not any(a.startswith("--model_save_path") for a in argv):
        args.model_save_path = tempfile.mkdtemp(prefix="sagan-save-")
    trainer = Trainer(train_options(args), model_config(args, dataset_info(args.dataset).num_classes or 0))
    for opt in (trainer.opt_g, trainer.opt_d):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()  # zero gradients: the moments exist (as after a real step) and the weights barely move
    seconds = []
    for k in range(n):
        trainer.step = k + 1
        t0 = time.perf_counter()
        path = trainer.save()
        seconds.append(time.perf_counter() - t0)
        if k:
            Path(path.parent, f"{k}.pt").unlink(missing_ok=True)
    return {"median_s": statistics.median(seconds), "seconds": seconds, "bytes": path.stat().st_size, "folder": str(path.parent),
            "G_params": count_params(trainer.G), "D_params": count_params(trainer.D)}


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """n JPEGs the size of ImageNet's photos (quality 90): a colour 1/f-noise texture (the power spectrum of
    natural images) under a vertical gradient, with a few soft-edged ellipses; the long side 350-500 px,
    aspect ratios 4:3, 3:4, 1:1, 3:2 and 16:9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ratios = (4 / 3, 3 / 4, 1.0, 3 / 2, 16 / 9)
    for i in range(n):
        r = ratios[i % len(ratios)]
        long = int(rng.integers(350, 501))
        w, h = (long, round(long / r)) if r >= 1 else (round(long * r), long)
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
        amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(w, h))  # 1/f amplitude
        spec = amp[None] * np.exp(2j * np.pi * rng.random((2, h, w // 2 + 1)))
        tex = np.fft.irfft2(spec, s=(h, w), axes=(1, 2))
        tex = (tex - tex.mean((1, 2), keepdims=True)) / (tex.std((1, 2), keepdims=True) + 1e-9)
        luma, chroma = tex[0][..., None], tex[1][..., None] * (rng.random(3) - 0.5)  # (H, W, 1), (H, W, 3)
        img = 120 + 40 * luma + 25 * chroma + np.linspace(50, -50, h)[:, None, None] * rng.random(3)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(2, 6))):
            cy, cx, ry, rx = rng.random() * h, rng.random() * w, (0.05 + 0.25 * rng.random()) * h, (0.05 + 0.25 * rng.random()) * w
            inside = np.clip(8 * (1 - np.hypot((yy - cy) / ry, (xx - cx) / rx)), 0, 1)[..., None]  # an edge a few px wide
            img = img * (1 - inside) + inside * (rng.random(3) * 200 + 30 * luma)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def loader_speed(argv: Sequence[str], batches: int = 0) -> dict:
    """Time the training loader over an image folder (`--dataset folder --data_dir ...` in argv) in its steady
    state, epoch after epoch (its workers persist): the first workers x PREFETCH_FACTOR + 1 batches start the
    workers and drain what they made ahead, then `batches` more are timed (default: 8 per batch a worker may
    hold in flight, at least 8), so what was ready when the clock started is at most an eighth of the count."""
    from data_loader import PREFETCH_FACTOR, build_dataset, get_loader

    args = get_parameters(list(argv))
    dataset, _ = build_dataset(data_spec(args))
    loader = get_loader(dataset, torch.device("cpu"), args.batch_size, args.seed, args.num_workers)
    workers = loader.num_workers
    in_flight = workers * PREFETCH_FACTOR
    batches = batches or max(8, 8 * in_flight)

    def stream() -> Iterator[torch.Tensor]:
        for epoch in itertools.count():
            loader.batch_sampler.set_epoch(epoch)
            for x, _ in loader:
                yield x

    it = stream()
    for _ in range(in_flight + 1):
        next(it)
    pids = [w.pid for w in getattr(loader._iterator, "_workers", [])]  # the persistent workers, when there are any
    cpu0, t0, images = cpu_seconds(pids), time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(it))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
    del it, loader
    rate = images / elapsed
    return {"workers": workers, "images": images, "batches": batches, "seconds": elapsed, "img_per_s": rate,
            "img_per_s_per_worker": rate / max(workers, 1), "ms_per_image_per_core": 1000 * max(workers, 1) / rate,
            "cpu_ms_per_image": 1000 * cpu / images}


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) of this process and of the given live processes, from /proc (Linux)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def decode_psnr(folder: Path, imsize: int, n: int = 200) -> dict:
    """PSNR (dB, uint8 scale) of the reduced-size decode against the full one, after the same centre crop and
    resize to imsize, over the first n images; and the fraction of them decoded at reduced size."""
    from data_loader import list_images, open_rgb, square_transform
    from metrics import to_uint8

    tf = square_transform(imsize)
    values, reduced = [], 0
    for f in list_images(folder)[:n]:
        full, fast = (to_uint8(tf(open_rgb(f, d))).double() for d in (None, imsize))
        with Image.open(f) as img:
            reduced += min(img.size) >= 2 * imsize
        mse = ((full - fast) ** 2).mean().item()
        values.append(float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse))
    finite = [v for v in values if math.isfinite(v)]
    return {"images": len(values), "reduced": reduced / max(len(values), 1),
            "median_db": statistics.median(values) if values else float("nan"), "min_db": min(finite) if finite else float("inf")}


def decode_paths(folder: Path, imsize: int, n: int, passes: int = 3) -> list[dict]:
    """CPU milliseconds per image (this process, one thread; median of `passes` passes over the first n images)
    of each way a JPEG becomes a training tensor: the previous path (full decode, torchvision's crop, resize,
    ToTensor, Normalize), the full decode with `SquareResize`, the reduced-size decode (the default), and a
    read from the decoded-image cache (--data_cache, built first in a temporary folder; its wall time is
    reported as `build_s`)."""
    import tempfile

    from torchvision import transforms as T

    from data_loader import CenterCropLongEdge, DataSpec, build_dataset, list_images, open_rgb, square_transform

    files = list_images(folder)[:n]
    before = T.Compose([CenterCropLongEdge(), T.Resize(imsize), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    square = square_transform(imsize)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cached, _ = build_dataset(DataSpec("folder", imsize, str(folder), str(folder), "", n, False, data_cache=tmp))
        build_s = time.perf_counter() - t0
        paths = {"previous path": lambda i: before(open_rgb(files[i])),
                 "full decode, SquareResize": lambda i: square(open_rgb(files[i])),
                 "reduced-size decode": lambda i: square(open_rgb(files[i], imsize)),
                 "decoded-image cache": lambda i: cached[i]}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rows = []
        try:
            for name, read in paths.items():
                times = []
                for _ in range(passes):
                    c0 = time.process_time()
                    for i in range(len(files)):
                        read(i)
                    times.append(1000 * (time.process_time() - c0) / len(files))
                rows.append({"path": name, "images": len(files), "ms_per_image": statistics.median(times)})
        finally:
            torch.set_num_threads(threads)
    for r in rows:
        r["ratio"] = r["ms_per_image"] / rows[0]["ms_per_image"]
    rows[-1]["build_s"] = build_s
    return rows


def parse_compare(spec: str | None) -> list[tuple[str, list[str]]]:
    if not spec:
        return [("base", [])]
    out = []
    for part in spec.split("|"):
        name, _, flags = part.partition(":")
        out.append((name.strip(), shlex.split(flags)))
    return out


def build_parser() -> argparse.ArgumentParser:
    """bench.py's own flags; the rest are main.py's (the base configuration of every variant)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=True)
    p.add_argument("--compare", type=str, default=None, help="'name:flags|name:flags' variants on top of the base flags")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--num_classes_bench", type=int, default=0, help="classes for the benchmarked model (0: unconditional)")
    p.add_argument("--json", type=str, default=None, help="also write the results here")
    p.add_argument("--gpu_hours", type=float, default=None, metavar="TFLOPS",
                   help="instead of timing: estimated GPU hours of every preset's full run at this sustained rate")
    p.add_argument("--time_to_acc", type=float, default=None, metavar="SECONDS",
                   help="instead of timing iterations: train each variant for up to SECONDS, timing 50/75/85%% class accuracy")
    p.add_argument("--acc_every", type=int, default=100, help="with --time_to_acc: steps between accuracy checks")
    p.add_argument("--acc_samples", type=int, default=1000, help="with --time_to_acc: samples per accuracy check")
    p.add_argument("--save_time", type=int, default=None, metavar="N",
                   help="instead of timing iterations: write the model's full checkpoint N times (docs/training.md, 'Preemption')")
    p.add_argument("--make_jpegs", type=Path, default=None, metavar="FOLDER", help="write --n synthetic ImageNet-sized JPEGs here")
    p.add_argument("--n", type=int, default=2000, help="with --make_jpegs: how many to write; with --decode_paths: how many to time")
    p.add_argument("--loader", type=Path, default=None, metavar="FOLDER", help="time the training loader over this image folder")
    p.add_argument("--decode_paths", type=Path, default=None, metavar="FOLDER",
                   help="CPU time per image of each decode path (previous, full, reduced, cached) over the first --n images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own, rest = build_parser().parse_known_args(argv)
    if own.threads:
        torch.set_num_threads(own.threads)
    if own.make_jpegs:
        t0 = time.perf_counter()
        make_jpegs(own.make_jpegs, own.n)
        print(f"wrote {own.n} JPEGs to {own.make_jpegs} ({time.perf_counter() - t0:.0f} s)")
        return 0
    if own.decode_paths:
        args = get_parameters(list(rest))
        rows = decode_paths(own.decode_paths, args.imsize, own.n)
        print(f"decode paths over {rows[0]['images']} images of {own.decode_paths} at "
              f"{args.imsize} px, one thread, CPU ms per image (median of 3 passes):")
        for r in rows:
            print(f"  {r['path']:<28} {r['ms_per_image']:7.3f} ms  {r['ratio']:5.2f}")
        print(f"  (the cache's one-time build: {rows[-1]['build_s']:.1f} s)")
        if own.json:
            Path(own.json).write_text(json.dumps(rows, indent=2))
        return 0
    if own.loader:
        flags = ["--dataset", "folder", "--data_dir", str(own.loader), *rest]
        r = loader_speed(flags)
        args = get_parameters(flags)
        source = "the decoded-image cache" if args.data_cache else f"{'full' if args.full_decode else 'reduced-size'} JPEG decode"
        print(f"loader over {own.loader} at {args.imsize} px, {source}, "
              f"{r['workers']} workers, batch {args.batch_size}: {r['images']} images in {r['seconds']:.1f} s = "
              f"{r['img_per_s']:.0f} images/s ({r['img_per_s_per_worker']:.0f} per worker), "
              f"{r['ms_per_image_per_core']:.2f} ms per image per core (CPU time: {r['cpu_ms_per_image']:.2f} ms per image)")
        if not args.full_decode and not args.data_cache:
            q = decode_psnr(own.loader, args.imsize)
            print(f"reduced-size decode vs full decode at {args.imsize} px over {q['images']} images: median PSNR "
                  f"{q['median_db']:.1f} dB, lowest {q['min_db']:.1f} dB; {q['reduced']:.0%} of them decoded at reduced size")
        if own.json:
            Path(own.json).write_text(json.dumps({"flags": flags, **r}, indent=2))
        return 0
    if own.time_to_acc:
        rows = []
        for vname, flags in parse_compare(own.compare):
            print(f"{vname}: {' '.join(list(rest) + flags)}", flush=True)
            r = time_to_accuracy(list(rest) + flags, own.time_to_acc, own.acc_every, own.acc_samples)
            r.update(name=vname, flags=" ".join(flags))
            rows.append(r)
            if own.json:
                with open(own.json, "w") as f:
                    json.dump({"base": rest, "budget_s": own.time_to_acc, "results": rows}, f, indent=2)
        print("| variant | flags | s/step | time to 50% | time to 75% | time to 85% | accuracy at the end (steps) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            cells = " | ".join(f"{v[0]} s (step {v[1]})" if v else f"not in {r['train_s']} s" for v in r["reached"].values())
            print(f"| {r['name']} | `{r['flags']}` | {r['s_per_step']:.3f} | {cells} | {r['final_acc']:.1%} ({r['steps']}) |")
        return 0
    if own.save_time:
        r = save_time(rest, own.save_time)
        print(f"checkpoint of {' '.join(rest)}: {r['bytes'] / 2**20:,.0f} MiB on disk, G {r['G_params']:,} / D {r['D_params']:,} "
              f"parameters; write (torch.save, fsync, rename) median {r['median_s']:.2f} s over {own.save_time} "
              f"(min {min(r['seconds']):.2f}, max {max(r['seconds']):.2f}) into {r['folder']}")
        return 0
    if own.gpu_hours:
        from parameter import PRESETS

        print(f"estimated GPU hours at a sustained {own.gpu_hours:g} TFLOP/s (counted FLOPs, not a measured run)")
        print(f"{'preset':<28} {'GFLOP/iter':>11} {'PFLOP total':>12} {'GPU hours':>10}")
        for r in preset_hours(own.gpu_hours, sorted(PRESETS)):
            print(f"{r['preset']:<28} {r['gflop_per_iter']:>11.1f} {r['total_pflop']:>12.1f} {r['gpu_hours']:>10.2f}")
        return 0
    base = get_parameters(rest)
    device = resolve_device(base.device)
    variants = parse_compare(own.compare)
    cpu = f"CPU ({torch.backends.cpu.get_cpu_capability()}, bf16 units: {cpu_bf16_units() or 'none'}), {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    peak = bf16_peak(name) if device.type == "cuda" else None
    parsed = []  # every variant's flags parsed and its model checked before any is timed
    for vname, flags in variants:
        args_v = get_parameters(list(rest) + flags)
        try:
            model_config(args_v, own.num_classes_bench)
        except ValueError as e:
            print(f"error: variant {vname!r} with --num_classes_bench {own.num_classes_bench}: {e}", file=sys.stderr)
            return 2
        parsed.append((vname, flags, args_v))
    print(f"device: {name}; torch {torch.__version__}; {tf32_flags()}; base flags: {' '.join(rest)}")
    rates: dict[torch.dtype, float] = {}
    results: list[dict] = []
    for vname, flags, args_v in parsed:
        argv_v = list(rest) + flags
        if device.type == "cuda" and args_v.amp == "off" and args_v.tf32 is None:
            argv_v += ["--tf32", "false"]  # an fp32 baseline that is fp32 (cuDNN would use TF32 by default)
        dtype = run_dtype(args_v, device)
        if dtype not in rates:
            rates[dtype] = matmul_flops_per_s(device, dtype)
            print(f"dense {str(dtype).split('.')[-1]} matmul: {rates[dtype] / 1e12:.2f} TFLOP/s"
                  + (f" ({rates[dtype] / peak:.0%} of the {peak / 1e12:.0f} TFLOP/s bf16 peak)" if peak else ""))
        r = bench_variant(argv_v, own.num_classes_bench, own.warmup, own.iters)
        r.update(name=vname, flags=" ".join(flags), argv=argv_v, dtype=str(dtype).split(".")[-1], tf32=tf32_flags(),
                 batch=args_v.batch_size, model=repr(model_config(args_v, own.num_classes_bench)))
        r["time_ratio"] = r["s_per_iter"] / (results[0]["s_per_iter"] if results else r["s_per_iter"])
        results.append(r)
        gc.collect()
        # Each variant's time as soon as it is measured, and the JSON rewritten: a run stopped early keeps it.
        print(f"timed {vname}: {r['s_per_iter']:.3f} s/iter, {r['img_per_s']:.1f} img/s, peak {r['peak_bytes'] / 2**20:.0f} MiB, "
              f"time ratio {r['time_ratio']:.2f}", flush=True)
        write_bench_json(own.json, name, rates, peak, rest, results)
    # FLOPs once per model (the speed flags do not change them), after every variant is timed
    flops_of: dict[str, int] = {}
    for r in results:
        if r["model"] not in flops_of:
            flops_of[r["model"]] = flops_at_batch(r["argv"], own.num_classes_bench, r["batch"])
        r["flops"] = flops_of[r["model"]]
        r["gflop_per_s"] = r["flops"] / r["s_per_iter"] / 1e9
        r["matmul_fraction"] = r["flops"] / r["s_per_iter"] / rates[getattr(torch, r["dtype"])]
        r["peak_fraction"] = r["flops"] / r["s_per_iter"] / peak if peak else None
    write_bench_json(own.json, name, rates, peak, rest, results)
    print("model FLOPs per iteration are counted once per model; 'of matmul' is against the dense matmul of the variant's "
          "own dtype" + (", 'of peak' against the bf16 peak" if peak else ""))
    print(f"{'variant':<16} {'s/iter':>8} {'img/s':>8} {'peak MiB':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'of matmul':>9} "
          f"{'of peak':>8} {'time ratio':>10}")
    for r in results:
        pf = f"{r['peak_fraction']:.1%}" if r["peak_fraction"] is not None else "-"
        print(f"{r['name']:<16} {r['s_per_iter']:>8.3f} {r['img_per_s']:>8.1f} {r['peak_bytes'] / 2**20:>9.0f} "
              f"{r['flops'] / 1e9:>7.1f} {r['gflop_per_s']:>8.1f} {r['matmul_fraction']:>9.0%} {pf:>8} {r['time_ratio']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
