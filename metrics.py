"""Evaluation: Inception Score, FID, KID and precision/recall, measured the way the SAGAN papers did.

Features come from torch-fidelity 0.4.0's `inception-v3-compat` network (the TF Inception graph of
2015-12-05, the one behind the published IS and FID numbers: 2048-d pool_3 features, 1008 logits,
TF1-style bilinear resize to 299 inside the network). The metric arithmetic is torch-fidelity's
(`isc_features_to_metric`, `fid_statistics_to_metric`, `kid_features_to_metric`,
`prc_features_to_metric`). This module does the parts where torch-fidelity's high-level wrapper falls
short for a training codebase:
- Weights are never downloaded at run time: `--inception_weights PATH`, else `$SAGAN_INCEPTION_WEIGHTS`,
  else `<image_path>/weights-inception-2015-12-05-6726825d.pth` (where `bash download.sh inception`
  puts it). A missing file is one error line, raised before any sampling.
- Sampling is ours: z ~ N(0, I) and, for conditional models, labels uniform over the classes, from a
  private seeded generator (torch-fidelity's wrapper crashes on `np.int` with current numpy when
  labels are needed, and it leaves G in eval mode). G runs in eval mode (BatchNorm running
  statistics, as the official code evaluates) and gets its previous mode back. The global RNGs are
  never touched, so evaluating inside a training run does not change the run.
- Reference statistics are cached under `--eval_cache_dir` (default `$SAGAN_CACHE_DIR` or
  `~/.cache/sagan`), in `refstats/`, keyed by dataset, split, image size, reference sample count,
  the SHA-256 of the weights file, a fingerprint of the data (file names, sizes and mtimes, plus the
  pixels of 16 images) and this module's protocol version; torch-fidelity's own cache key ignores
  the weights file and the sample count.

Protocol (docs/evaluation.md compares it with the official code, StudioGAN and MMGeneration):
- Images are quantised to uint8 exactly as a PNG written by torchvision's `save_image` would hold
  them, round(127.5 x + 127.5) clamped to [0, 255], so scoring a folder of written samples and
  scoring the generator directly agree.
- Real images are the training split at the training resolution, through the loader's own
  transforms, without flips; `--eval_ref_samples` of them (default 50,000, 0 = all) chosen by a fixed
  seed.
- IS is reported over 10 splits (mean and std, as MMGeneration and BigGAN-PyTorch) and over 1 split
  (as the official TF code and StudioGAN).
- KID: 100 subsets of min(1000, n) samples, cubic polynomial kernel (torch-fidelity's defaults).
- Precision/recall (Kynkaenniemi et al. 2019, k = 3) use the same Inception pool features, as
  StudioGAN does; torch-fidelity defaults to VGG-16 features, which would need a second network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from durable import write_durably, write_text
from progress import Progress, check_abort, duration, track
from sagan_models import draw_latents, eval_mode

if TYPE_CHECKING:
    from drs import RejectionSampler

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_NAME}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # the torch.hub convention: the file name carries its SHA-256 prefix
WEIGHTS_ENV = "SAGAN_INCEPTION_WEIGHTS"
CACHE_ENV = "SAGAN_CACHE_DIR"
PROTOCOL = 1  # bump whenever a change alters reference features, so that old caches are never reused
KID_SUBSETS, KID_SUBSET_SIZE, PR_NEIGHBOURHOOD = 100, 1000, 3
EVAL_SEED = 2019  # z and labels for evaluation samples; fixed so checkpoints are compared on the same z


class EvalError(Exception):
    """An evaluation that cannot run; the message is one line that says what to do."""


# ----------------------------------------------------------------------------------------------
# Weights and the feature network


def resolve_weights(flag: str | None, image_path: str = "./data") -> Path:
    """The Inception weights file named by the flag, the environment, or download.sh's location."""
    candidates = [Path(flag)] if flag else []
    if not flag and os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    if not candidates:
        candidates.append(Path(image_path) / WEIGHTS_NAME)
    for c in candidates:
        if c.is_file():
            return c
    raise EvalError(f"Inception weights not found at {candidates[0]}; fetch them once with: bash download.sh inception "
                    f"(or pass --inception_weights PATH, or set {WEIGHTS_ENV})")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def private_rng(device: torch.device) -> Iterator[None]:
    """Run a block without disturbing the global torch RNGs (CPU and, if used, the CUDA device)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        yield


class Inception:
    """torch-fidelity's TF-compatible InceptionV3: uint8 (N, 3, H, W) -> pool (N, 2048), logits (N, 1008)."""

    def __init__(self, weights: Path, device: torch.device) -> None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise EvalError("the Inception metrics need torch-fidelity, which is not installed: pip install "
                            "torch-fidelity==0.4.0 (or score with --eval_metric classifier on a labelled dataset)") from e

        try:  # tensors only: refuse a pickle that would run code before torch-fidelity loads it
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
            raise EvalError(f"{weights} is not a readable weights file ({str(e).splitlines()[0]}); "
                            f"fetch it again with: bash download.sh inception") from e
        self.sha256 = file_sha256(weights)
        self.path = weights
        self.official = self.sha256.startswith(WEIGHTS_SHA256_PREFIX)
        with private_rng(device):  # layer construction draws random initial weights
            try:
                net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                  feature_extractor_weights_path=str(weights))
            except RuntimeError as e:
                raise EvalError(f"{weights} does not hold InceptionV3 weights ({str(e).splitlines()[0]}); "
                                f"fetch the right file with: bash download.sh inception") from e
        self.net = net.to(device).eval()
        self.device = device

    # What the features are computed with; part of the reference-statistics cache key.
    PRECISION = "fp32, TF32 off"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with no_tf32():  # full fp32 on GPUs too, so that GPU and CPU statistics agree
            pool, logits = self.net(images.to(self.device))
        return pool.cpu(), logits.cpu()


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Matmuls and cuDNN convolutions in full fp32 (no TF32) inside the block; the flags come back after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8, the values `torchvision.utils.save_image` writes to a PNG."""
    return (x.float() * 127.5 + 128.0).floor().clamp_(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Features of generated, real and on-disk images


class Features:
    """Pool features and logits of one image set."""

    def __init__(self, pool: Tensor, logits: Tensor) -> None:
        self.pool, self.logits = pool, logits

    def __len__(self) -> int:
        return len(self.pool)


def eval_latents(n: int, z_dim: int, num_classes: int, seed: int = EVAL_SEED,
                 truncation: float = 0.0) -> tuple[Tensor, Tensor | None]:
    """The evaluation z (N(0, I), or truncated to [-t, t]: `truncate_latents`) and labels (uniform), from a
    private generator: the same on every call, and the same labels at every truncation."""
    g = torch.Generator().manual_seed(seed)
    z = draw_latents(n, z_dim, g, truncation)
    y = torch.randint(0, num_classes, (n,), generator=g) if num_classes else None
    return z, y


@torch.no_grad()
def generate(G: nn.Module, n: int, batch_size: int, device: torch.device, seed: int = EVAL_SEED,
             truncation: float = 0.0, drs: RejectionSampler | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (uint8 images, labels) batches from G in eval mode; G's previous mode is restored afterwards.
    With `drs` (a drs.RejectionSampler of this G, built with the same truncation), the samples that
    discriminator rejection sampling keeps, with the same labels."""
    if drs is not None:
        yield from drs.generate(n, seed)
        return
    cfg = G.cfg
    z, y = eval_latents(n, cfg.z_dim, cfg.num_classes, seed, truncation)
    with eval_mode(G):
        for i in range(0, n, batch_size):
            check_abort(f"sampling {n:,} images")  # a stop signal abandons an evaluation at the next batch
            zb = z[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device) if y is not None else None
            yield to_uint8(G(zb, yb)).cpu(), (yb.cpu() if yb is not None else None)


# Inception over more images than this on a CPU gets a warning with the estimated time (once per kind of pass).
CPU_WARN_IMAGES = 4000
_warned: set[str] = set()


def features_of(net: Inception, batches: Iterable[Tensor], what: str = "Inception features", total: int | None = None,
                shorten: str | None = None) -> Features:
    """Features of a stream of uint8 image batches, with progress lines (`progress.Progress`). On a CPU,
    a pass over more than CPU_WARN_IMAGES images warns once, after its first batch, with the time it
    will take at the measured rate and the flag (`shorten`) that makes it shorter."""
    feats = []
    with Progress(what, total, "images") as p:
        for b in batches:
            feats.append(net(b))
            p.update(len(b))
            if (len(feats) == 1 and net.device.type == "cpu" and total and total > CPU_WARN_IMAGES and shorten
                    and what not in _warned):
                _warned.add(what)
                eta = (total - len(b)) * (time.perf_counter() - p.t0) / len(b)  # the first batch, loading included
                print(f"warning: {what}: Inception on the CPU over {total:,} images will take about {duration(eta)}; "
                      f"{shorten} makes it shorter", file=sys.stderr, flush=True)
    return Features(torch.cat([p for p, _ in feats]), torch.cat([l for _, l in feats]))


def generator_features(G: nn.Module, net: Inception, n: int, batch_size: int = 64, seed: int = EVAL_SEED,
                       truncation: float = 0.0, drs: RejectionSampler | None = None) -> Features:
    device = next(G.parameters()).device
    return features_of(net, (imgs for imgs, _ in generate(G, n, batch_size, device, seed, truncation, drs)),
                       f"evaluation: Inception features of {n:,} samples", n, "--eval_samples N")


def dataset_features(dataset: Dataset, net: Inception, batch_size: int = 64, num_workers: int = 0,
                     what: str = "Inception features of the training images") -> Features:
    """Features of a dataset whose items are ([-1, 1] image, label); read in order, no flips."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))  # never draws from the global RNG
    return features_of(net, (to_uint8(x) for x, _ in loader), what, len(dataset), "--eval_ref_samples N (default 50000; 0 means all)")


def folder_images(folder: Path, imsize: int) -> Tensor:
    """All PNG/JPEG files directly in `folder` as uint8 (N, 3, imsize, imsize); other sizes are an error."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if folder.is_dir() else []
    if not files:
        raise EvalError(f"no .png/.jpg images in {folder}; write some with --sample_dir {folder} --sample_num N")
    imgs = []
    for f in files:
        try:
            with Image.open(f) as img:
                a = np.asarray(img.convert("RGB"))
        except OSError as e:
            raise EvalError(f"cannot read image {f} ({e}); delete or replace it") from e
        if a.shape[:2] != (imsize, imsize):
            raise EvalError(f"{f} is {a.shape[1]}x{a.shape[0]}, but the reference statistics are at {imsize}x{imsize}; "
                            f"pass --imsize {a.shape[0]} or resize the images")
        imgs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
    return torch.stack(imgs)


def folder_features(folder: Path, imsize: int, net: Inception, batch_size: int = 64) -> Features:
    return features_of(net, folder_images(folder, imsize).split(batch_size))


def write_samples(G: nn.Module, folder: Path, n: int, batch_size: int = 64, seed: int = EVAL_SEED,
                  truncation: float = 0.0, drs: RejectionSampler | None = None) -> list[Path]:
    """Write n generated PNGs, `<index>.png` or `<index>_c<label>.png`, for outside tools."""
    folder.mkdir(parents=True, exist_ok=True)
    device = next(G.parameters()).device
    paths, k = [], 0
    with Progress(f"writing {n:,} samples to {folder}", n, "images") as p:
        for imgs, ys in generate(G, n, batch_size, device, seed, truncation, drs):
            for j, img in enumerate(imgs):
                name = f"{k:06d}_c{int(ys[j])}.png" if ys is not None else f"{k:06d}.png"
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / name)
                paths.append(folder / name)
                k += 1
            p.update(len(imgs))
    return paths


# ----------------------------------------------------------------------------------------------
# Reference statistics, cached


def reference_indices(size: int, n: int) -> np.ndarray:
    """Which training images form the reference set: all of them, or n chosen by a fixed seed."""
    if n <= 0 or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(0).choice(size, n, replace=False))


def hash_file_stats(h: "hashlib._Hash", files: list[Path], what: str) -> None:
    """Feed each file's name, size and modification time into `h` (with a progress line for long lists)."""
    for p in track(files, what, len(files), "files"):
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())


def dataset_fingerprint(dataset: Dataset) -> str:
    """Changes when the data changes: the size, the source files' names, sizes and mtimes, 16 images' pixels."""
    h = hashlib.sha256(str(len(dataset)).encode())
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    files = getattr(base, "source_files", lambda: [])()
    hash_file_stats(h, files, "fingerprinting the dataset's files (names, sizes, dates)")
    for i in np.unique(np.linspace(0, len(dataset) - 1, 16).round().astype(int)):
        h.update(to_uint8(dataset[int(i)][0]).numpy().tobytes())
    return h.hexdigest()


def cache_root(flag: str | None) -> Path:
    return Path(flag or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sagan")


def save_atomic(obj: object, path: Path) -> None:
    """torch.save through durable.write_durably (cache entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, lambda f: torch.save(obj, f))


def reference_stats(dataset: Dataset, name: str, imsize: int, net: Inception, cache_dir: Path, n_ref: int,
                    batch_size: int = 64, num_workers: int = 0) -> dict:
    """{'pool': (N, 2048) float32, 'mu', 'sigma', 'meta'} of the training images; computed once, then cached."""
    idx = reference_indices(len(dataset), n_ref)
    meta = {"dataset": name, "split": "train", "imsize": imsize, "n": int(len(idx)), "weights_sha256": net.sha256,
            "data": dataset_fingerprint(dataset), "protocol": PROTOCOL, "device": net.device.type, "precision": net.PRECISION}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "refstats" / f"{name}-train-{imsize}px-{len(idx)}-{key}.pt"
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("meta") == meta:
                cached["cache"] = {"path": str(path), "hit": True}
                return cached
        except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed and replaced
            pass
    sub = dataset if len(idx) == len(dataset) else Subset(dataset, idx.tolist())
    print(f"reference statistics: Inception pool3 features of {len(idx):,} of the {len(dataset):,} {name} training images "
          f"at {imsize} px (computed once, cached at {path})", file=sys.stderr, flush=True)
    feats = dataset_features(sub, net, batch_size, num_workers, "reference statistics")
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(feats.pool)
    out = {"pool": feats.pool, "mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"]), "meta": meta}
    save_atomic(out, path)
    out["cache"] = {"path": str(path), "hit": False}
    return out


# ----------------------------------------------------------------------------------------------
# Metrics


def count_tag(n: int) -> str:
    """10000 -> '10k', 50000 -> '50k', 2500 -> '2500' (StyleGAN-style metric names: fid10k)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def sampling_of(m: dict) -> tuple[float, int, float]:
    """How a result's samples were drawn: (truncation, standing-statistics batches, DRS percentile), 0 where unused."""
    return m.get("truncation") or 0.0, m.get("standing_stats") or 0, m.get("drs") or 0.0


def sampling_record(G: nn.Module, drs: RejectionSampler | None) -> dict:
    """What an evaluation of G records beyond its truncation: the batches G's batch-norm statistics were
    recomputed over (`sagan_models.standing_stats` marks the G it returns) and DRS's summary."""
    out = {"standing_stats": G.standing_stats} if getattr(G, "standing_stats", 0) else {}
    if drs is not None:
        out.update(drs.summary())
    return out


def metric_tag(m: dict) -> str:
    """The suffix of a result's metric names: the sample count, then the truncation when z was truncated,
    the number of batches when G's batch-norm statistics were recomputed (--standing_stats), and DRS's
    percentile when the samples were rejection-sampled (fid10k, cls_acc2k_trunc1.5, fid2k_ss16, fid10k_drs80):
    each of these evaluations is another metric, with its own names and JSON file."""
    t, s, q = sampling_of(m)
    return count_tag(m["samples"]) + (f"_trunc{t:g}" if t else "") + (f"_ss{s}" if s else "") + (f"_drs{q:g}" if q else "")


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), the trace of the root taken as
    torch-fidelity 0.4.0's fid_statistics_to_metric takes it (the sum of the square roots of S1 S2's eigenvalues,
    real part), so FID matches it; numpy alone, so the classifier metric needs no torch-fidelity."""
    diff = mu1 - mu2
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sigma1.dot(sigma2)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def compute_metrics(fake: Features, ref: dict) -> dict:
    """IS (10 splits and 1 split), FID, KID and precision/recall of `fake` against the reference stats."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    n = len(fake)
    if n < 10:
        raise EvalError(f"need at least 10 samples for IS over 10 splits, got {n}; raise --eval_samples")
    is10 = isc_features_to_metric(fake.logits, splits=10, shuffle=False)
    is1 = isc_features_to_metric(fake.logits, splits=1, shuffle=False)
    st = fid_features_to_statistics(fake.pool)
    fid = fid_from_stats(st["mu"], st["sigma"], ref["mu"].numpy(), ref["sigma"].numpy())
    ref_pool = ref["pool"]
    kid = kid_features_to_metric(fake.pool, ref_pool, kid_subsets=KID_SUBSETS,
                                 kid_subset_size=min(KID_SUBSET_SIZE, n, len(ref_pool)), verbose=False)
    prc = prc_features_to_metric(fake.pool, ref_pool, prc_neighborhood=min(PR_NEIGHBOURHOOD, n - 1, len(ref_pool) - 1),
                                 prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    return {
        "is_10splits": is10["inception_score_mean"], "is_10splits_std": is10["inception_score_std"],
        "is_1split": is1["inception_score_mean"],
        "fid": fid,
        "kid": kid["kernel_inception_distance_mean"], "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"], "recall": prc["recall"],
        "samples": n, "ref_samples": len(ref_pool),
    }


def tensorboard_scalars(m: dict) -> dict[str, float]:
    """Metric names with their sample count (and truncation: `metric_tag`), e.g. metrics/fid10k, metrics/is10k_1split."""
    t = metric_tag(m)
    return {f"metrics/is{t}": m["is_10splits"], f"metrics/is{t}_1split": m["is_1split"], f"metrics/fid{t}": m["fid"],
            f"metrics/kid{t}": m["kid"], f"metrics/precision{t}": m["precision"], f"metrics/recall{t}": m["recall"]}


def truncation_note(m: dict, sep: str) -> str:
    """The samples line's note on how they were drawn, each part after `sep`: nothing for N(0, I), G's running
    batch-norm averages and every sample kept; else the interval of a truncated normal, the batches of standing
    statistics, DRS's percentile and the share of candidates it kept."""
    t, s, q = sampling_of(m)
    return ((f"{sep}z truncated to [-{t:g}, {t:g}]" if t else "")
            + (f"{sep}G's batch-norm statistics recomputed over {s} batches" if s else "")
            + (f"{sep}kept by DRS at the {q:g}th percentile: {m['drs_acceptance']:.1%} of {m['drs_candidates']:,} candidates"
               if q else ""))


def format_table(result: dict) -> str:
    """A plain-text table of one evaluation result (as written to JSON by `main.py --train false`)."""
    m, ref, w = result["metrics"], result["reference"], result["weights"]
    note = "" if w["official"] else "  (NOT the TF-Inception 2015-12-05 file: numbers are not comparable with papers)"
    rows = [
        ("source", result["source"]),
        ("IS (10 splits)", f"{m['is_10splits']:.4f} +- {m['is_10splits_std']:.4f}"),
        ("IS (1 split)", f"{m['is_1split']:.4f}"),
        ("FID", f"{m['fid']:.4f}"),
        ("KID", f"{m['kid']:.6f} +- {m['kid_std']:.6f}"),
        ("precision", f"{m['precision']:.4f}"),
        ("recall", f"{m['recall']:.4f}"),
        ("samples", f"{m['samples']:,}{truncation_note(m, ', ')}"),
        ("reference", f"{ref['dataset']} {ref['split']} split, {ref['n']:,} images at {ref['imsize']} px "
                      f"(cache {'hit' if ref['cache_hit'] else 'written'}: {ref['cache']})"),
        ("weights", f"{w['path']} sha256 {w['sha256']}{note}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Evaluator:
    """Loads the Inception net and the reference statistics once; `__call__(G)` scores a generator.

    The interface that the trainer and main.py use (shared with `classifier.ClassifierEvaluator`):
    `__call__(G, n, source)` and `folder(path)` return a result dict with "metrics"; `scalars(metrics)`
    gives the TensorBoard scalars; `best` lists (checkpoint best_<name>, metric, "min"/"max");
    `format(result)` is the plain-text table. `truncation` > 0 draws the samples' z from the truncated
    normal (`truncate_latents`); the result records it, and the batches G's batch-norm statistics were
    recomputed over when G comes from `sagan_models.standing_stats`."""

    best = (("fid", "fid", "min"), ("is", "is_10splits", "max"))
    scalars = staticmethod(tensorboard_scalars)
    format = staticmethod(format_table)

    def __init__(self, dataset: Dataset, dataset_name: str, imsize: int, weights: Path, device: torch.device,
                 cache_dir: Path, n_ref: int, batch_size: int = 64, num_workers: int = 0, truncation: float = 0.0) -> None:
        self.net = Inception(weights, device)
        self.batch_size, self.truncation = batch_size, truncation
        self.drs: RejectionSampler | None = None  # set by main.py for --drs: score the samples DRS keeps
        self.dataset = dataset
        self.ref = reference_stats(dataset, dataset_name, imsize, self.net, cache_dir, n_ref, batch_size, num_workers)
        self.imsize = imsize

    def _result(self, source: str, fake: Features, truncation: float | None = None) -> dict:
        """A folder's images have no recorded z: `truncation` None leaves it out of the metrics."""
        meta = self.ref["meta"]
        return {
            "source": source,
            "metrics": {**compute_metrics(fake, self.ref), **({} if truncation is None else {"truncation": truncation})},
            "reference": {**{k: meta[k] for k in ("dataset", "split", "imsize", "n")}, "fingerprint": meta["data"][:16],
                          "cache": self.ref["cache"]["path"], "cache_hit": self.ref["cache"]["hit"]},
            "weights": {"path": str(self.net.path), "sha256": self.net.sha256, "official": self.net.official},
            "protocol": PROTOCOL,
        }

    def __call__(self, G: nn.Module, n: int, source: str = "generator") -> dict:
        fake = generator_features(G, self.net, n, self.batch_size, truncation=self.truncation, drs=self.drs)
        result = self._result(source, fake, self.truncation)
        result["metrics"].update(sampling_record(G, self.drs))
        return result

    def folder(self, folder: Path) -> dict:
        return self._result(str(folder), folder_features(folder, self.imsize, self.net, self.batch_size))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk (metrics.jsonl is append-only)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())



DEFAULT_EVAL_SAMPLES = 10_000


class MetricsLog:
    """A run's metrics.jsonl and its best checkpoints: `evaluate` scores a generator with an evaluator, appends
    the record, logs the scalars to TensorBoard and keeps `best_<name>.pt` for each of the evaluator's `best`
    entries; `best` (name -> value) travels in every checkpoint. `truncate` drops the records after a resumed step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best: dict[str, float] = {}

    def evaluate(self, evaluator: "Evaluator", G: nn.Module, n: int | None, step: int, kimg: float, train_seconds: float,
                 source: str, writer: object | None, save: Callable[[str], object]) -> dict:
        t0 = time.perf_counter()
        result = evaluator(G, n or DEFAULT_EVAL_SAMPLES, source=source)
        m = result["metrics"]
        scalars = evaluator.scalars(m)
        record = {"step": step, "kimg": kimg, "train_seconds": round(train_seconds, 1),
                  "seconds": round(time.perf_counter() - t0, 3), **m}
        append_jsonl(self.path, record)
        if writer:
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
        for name, key, direction in evaluator.best:
            old = self.best.get(name)
            if old is None or (m[key] < old if direction == "min" else m[key] > old):
                self.best[name] = m[key]
                save(f"best_{name}")
        print(" ".join([f"eval step {step}:"] + [f"{k.split('/')[1]} {v:.4f}" for k, v in scalars.items()]
                       + [f"({record['seconds']:.0f} s)"]), flush=True)
        return record

    def truncate(self, step: int) -> set[int]:
        """On resume: drop the records after `step`, so that no step appears twice (a cut last line is dropped with
        a warning; a corrupt line before the end is an error). Returns the steps that keep a record."""
        if not self.path.is_file():
            return set()
        raw = self.path.read_text().splitlines()
        lines, dropped = [], False
        for number, ln in enumerate(raw, 1):
            if not ln.strip():
                continue
            try:
                lines.append((ln, json.loads(ln).get("step", 0)))
            except (json.JSONDecodeError, AttributeError):
                if any(rest.strip() for rest in raw[number:]):
                    raise EvalError(f"{self.path} line {number} is corrupt (not a JSON record); delete or repair that line, "
                                    f"then resume")
                print(f"warning: {self.path}: dropped an incomplete last line (a write was cut off)", file=sys.stderr, flush=True)
                dropped = True
        keep = [(ln, s) for ln, s in lines if s <= step]
        if len(keep) != len(lines) or dropped:
            write_text(self.path, "".join(ln + "\n" for ln, _ in keep))
        return {s for _, s in keep}
