"""Command-line flags.

Every flag of heykeetae/Self-Attention-GAN's `parameter.py` keeps its name and meaning, so that port's
command lines run unchanged. Flags that port accepted but ignored now do what their names say:
`--d_iters` (= `--n_dis`), `--num_workers`, `--parallel` (DataParallel over all visible GPUs),
`--use_tensorboard`, `--attn_path` and `--lr_decay`. Defaults follow the paper and the official code
where the port differed:
- `--adv_loss hinge` (the port defaulted to wgan-gp; the paper and every reference use hinge).
- `--beta2 0.999` (official code; the port and the paper's text say 0.9).
- `--d_iters 1` (TTUR, one D step per G step, as in the paper; the port's value 5 was ignored).
- `--dataset shapes` (the built-in dataset; the port's default `cifar` had no loader).
- `--lr_decay 1.0`, i.e. no decay (the paper uses constant learning rates; the port never applied its 0.95).
- `--model_save_step` counts steps (the port's default 1.0 meant every step).
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import fields
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import augment
from data_loader import ALIASES, DATASETS, DataSpec
from classifier import ClassifierEvaluator
from metrics import WEIGHTS_NAME, Evaluator
from sagan_models import ARCHS, ATTN_BACKENDS, ATTN_BLOCKS, ATTN_VARIANTS, CONVT_SN_DIMS, IMSIZES, INITS, SN_LAYERS, ModelConfig
from trainer import MS_SPACES, TrainOptions

LOSSES = ("hinge", "wgan-gp", "ns")

_TRUE = {"true", "t", "1", "yes", "y", "on"}
_FALSE = {"false", "f", "0", "no", "n", "off"}


def str2bool(v: str | bool) -> bool:
    """Exact-match boolean: true/false, 1/0, yes/no, on/off (case-insensitive); anything else is an error."""
    if isinstance(v, bool):
        return v
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got {v!r}")


def resolutions(v: str) -> tuple[int, ...] | None:
    """'16,32' -> (16, 32); 'none' or '' -> (); 'default' -> None (per-size default)."""
    s = v.strip().lower()
    if s == "default":
        return None
    if s in ("none", ""):
        return ()
    try:
        return tuple(int(t) for t in s.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated feature resolutions such as 16,32, or none; got {v!r}")


# The best checkpoints kept by --eval_step, as the papers' tables report best-FID/IS steps: best_<name> for each
# `best` entry of both evaluators (Inception in metrics.py, the offline classifier metric in classifier.py).
NAMED_CHECKPOINTS = tuple(f"best_{name}" for name, _, _ in (*Evaluator.best, *ClassifierEvaluator.best))


def optional_step(v: str) -> str | None:
    """--pretrained_model: a step number, 'latest', a best checkpoint (NAMED_CHECKPOINTS), or None."""
    s = v.strip()
    if s.lower() in ("none", ""):
        return None
    if s.lower() in ("latest", *NAMED_CHECKPOINTS) or s.isdigit():
        return s.lower()
    if s.startswith("hf://") or (Path(s) / "model.safetensors").is_file():
        return s  # an exported folder (export.py) or a Hugging Face Hub repository: its weights, fresh optimizers
    path = Path(s)
    if path.is_dir() or "/" in s or path.suffix == ".pt":
        # A path: say which flags name it (checkpoints live in <model_save_path>/<version>/<which>.pt).
        folder, which = (path, "latest") if path.is_dir() or not path.suffix else (path.parent, path.stem)
        which = which if which.isdigit() or which in NAMED_CHECKPOINTS else "latest"
        kind = "a folder" if path.is_dir() else "a path"
        raise argparse.ArgumentTypeError(
            f"{s!r} is {kind}; --pretrained_model names a checkpoint inside --model_save_path/--version: for this one pass "
            f"--model_save_path {folder.parent or '.'} --version {folder.name} --pretrained_model {which}")
    raise argparse.ArgumentTypeError(f"expected a checkpoint step number, 'latest' or one of {', '.join(NAMED_CHECKPOINTS)}; got {v!r}")


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= low."""
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}")
        if n < low:
            raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {v!r}")
        return n
    return parse


positive = _at_least(1)
non_negative = _at_least(0)
SEED_MAX = 2**32 - 1
MIN_EVAL_SAMPLES = 10  # numpy's limit; torch and random take it too


def seed_value(v: str) -> int:
    """--seed: a whole number in 0..2**32-1."""
    try:
        n = int(v)
    except ValueError:
        n = -1
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_MAX}, got {v!r}")
    return n


def diffaug_policy(v: str) -> str:
    """A DiffAugment policy (augment.py), normalised: 'translation, cutout' -> 'translation,cutout'."""
    try:
        return ",".join(augment.parse_policy(v))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _float_or_nan(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return float("nan")


def fraction(v: str) -> float:
    """A number from 0 to 1 (EMA decays)."""
    f = _float_or_nan(v)
    if not 0.0 <= f <= 1.0:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {v!r}")
    return f


def workers_value(v: str) -> int | None:
    """--num_workers: a whole number >= 0, or auto."""
    if v.strip().lower() == "auto":
        return None
    return non_negative(v)


def device_name(v: str) -> str:
    """--device: auto, cpu, cuda or cuda:N."""
    s = v.strip().lower()
    if s in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", s):
        return s
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {v!r}")


def non_negative_float(v: str) -> float:
    """A weight of 0 (off) or more."""
    f = _float_or_nan(v)
    if not 0.0 <= f < float("inf"):  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v!r}")
    return f


def percentile(v: str) -> float:
    """A percentile strictly between 0 and 100, or 0 (off)."""
    f = _float_or_nan(v)
    if not (f == 0.0 or 0.0 < f < 100.0):  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a percentile in (0, 100), or 0 for off, got {v!r}")
    return f


def positive_step(v: str) -> int:
    """Step counts; accepts the old port's floats such as 1.0."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps, got {v!r}")
    if f < 1 or f != int(f):
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1, got {v!r}")
    return int(f)


# Named presets: flag values of published runs (sources in ../shared/reference/sagan-reference.md,
# section (b), and docs/reproducing.md). `global_batch` is the batch per optimizer
# step over all processes; unless --batch_size is given, batch_size = global_batch / (processes x accum).
_MM_CIFAR = dict(dataset="cifar10", imsize=32, arch="resnet", num_classes=-1, global_batch=64, g_lr=2e-4, d_lr=2e-4,
                 beta1=0.5, beta2=0.999, n_dis=5, total_step=100_000, flip=True, init="ortho", cbn_sn=True, bn_eps=1e-4)
_IMAGENET = dict(dataset="imagenet", imsize=128, arch="resnet", num_classes=-1, global_batch=256, g_lr=1e-4, d_lr=4e-4,
                 beta1=0.0, beta2=0.999, n_dis=1, total_step=1_000_000, init="xavier", flip=False)
# heykeetae's model exactly: SN on l1-l4 only, its ConvTranspose SN matrix (in, out*k*k), plain attention and output layers
_PORT_64 = dict(imsize=64, arch="dcgan", attn_variant="paper", g_attn=(16, 32), d_attn=(8, 4), num_classes=0, adv_loss="hinge",
                global_batch=64, g_lr=1e-4, d_lr=4e-4, beta1=0.0, beta2=0.9, n_dis=1, total_step=100_000, init="pytorch",
                sn_layers="port", convt_sn_dim=0)
# StudioGAN's own runs (src/configs/*/SAGAN*.yaml @947b35e): its D's in-place ReLU also rectifies the block shortcut's
# input; SN eps 1e-6, Adam eps 1e-6, BN eps 1e-4, SN on the CBN tables, orthogonal init, horizontal flips.
_STUDIOGAN = dict(arch="resnet", num_classes=-1, init="ortho", flip=True, cbn_sn=True, bn_eps=1e-4, sn_eps=1e-6, adam_eps=1e-6,
                  d_relu_shortcut=True)
_FMNIST = dict(dataset="fashion_mnist", imsize=32, arch="resnet", num_classes=-1, g_conv_dim=12, d_conv_dim=16, global_batch=32,
               g_lr=4e-4, d_lr=1.6e-3, beta1=0.0, beta2=0.999, n_dis=2, channels_last=True, lr_decay=0.5, ema=True,
               ema_decay=0.99, num_workers=0, log_step=100, eval_samples=2000, eval_metric="classifier", d_ac=True)
PRESETS: dict[str, dict] = {
    # MMGeneration configs/sagan, configs/sngan_proj (CIFAR-10, 64x1, 500k MM iterations = 100k G steps)
    "sagan_cifar10_32": {**_MM_CIFAR, "g_attn": (16,), "d_attn": (16,)},
    # SNGAN-proj's G has no SN, and MMGeneration's CBN tables follow it (with_embedding_spectral_norm = with_spectral_norm)
    "sngan_proj_cifar10_32": {**_MM_CIFAR, "g_attn": (), "d_attn": (), "g_sn": False, "cbn_sn": False},
    # StudioGAN CIFAR10/SAGAN.yaml (attention G loc 2, D loc 1: 16x16) and ImageNet/SAGAN-256.yaml (G loc 4, D loc 1: 64x64)
    "studiogan_sagan_cifar10_32": {**_STUDIOGAN, "dataset": "cifar10", "imsize": 32, "global_batch": 64, "g_lr": 2e-4, "d_lr": 2e-4,
                                   "beta1": 0.5, "beta2": 0.999, "n_dis": 5, "total_step": 100_000, "g_attn": (16,), "d_attn": (16,)},
    "studiogan_sagan_imagenet_128": {**_STUDIOGAN, "dataset": "imagenet", "imsize": 128, "global_batch": 256, "g_lr": 1e-4,
                                     "d_lr": 4e-4, "beta1": 0.0, "beta2": 0.999, "n_dis": 1, "total_step": 1_000_000,
                                     "g_attn": (64,), "d_attn": (64,)},
    # The SAGAN paper (Table 2, feat64) and MMGeneration's ImageNet run; the official script's feat32
    "sagan_imagenet_128": {**_IMAGENET, "g_attn": (64,), "d_attn": (64,)},
    "sagan_imagenet_128_feat32": {**_IMAGENET, "g_attn": (32,), "d_attn": (32,)},
    # MMGeneration's BigGAN-schedule run (32x8, EMA 0.999 from 2000, Xavier, no augmentation, SN eps 1e-8)
    "sagan_imagenet_128_biggan": {**_IMAGENET, "g_attn": (64,), "d_attn": (64,), "ema": True, "ema_decay": 0.999,
                                  "ema_start": 2000, "sn_eps": 1e-8, "bn_eps": 1e-5},
    # MMGeneration's ImageNet SNGAN-projection (128x2, lr G 2e-4 / D 5e-5 as configured, 5 D steps, 500k G steps)
    "sngan_proj_imagenet_128": {**_IMAGENET, "g_attn": (), "d_attn": (), "g_sn": False, "g_lr": 2e-4, "d_lr": 5e-5,
                                "n_dis": 5, "total_step": 500_000, "init": "ortho", "flip": True, "cbn_sn": False, "bn_eps": 1e-4},
    # heykeetae's CelebA and LSUN church runs (its model and optimiser; the non-local fork's FIDs are at 100k steps)
    "sagan_celeb_64": {**_PORT_64, "dataset": "celeb"},
    "sagan_lsun_64": {**_PORT_64, "dataset": "lsun", "lsun_category": "church_outdoor"},
    # The non-local fork's span-3 run. Its span also applies to D's 4x4 map, where it masks every key of
    # every query (the fork then silently averages uniformly); we refuse that layer, so D attends at 8 only.
    "nonlocal_sagan_celeb_64": {**_PORT_64, "dataset": "celeb", "span": 3, "d_attn": (8,)},
    # Fashion-MNIST on 2 CPU cores in 30 minutes, both classifiers' training included (README, "The Fashion-MNIST result";
    # BENCHMARKS.md, "The second fmnist_32"): a narrower G (12) against D (16) and two D steps per G step, which
    # learned fastest by the tuning classifier's figures; the rates halved and an EMA G from step 1,250. D's auxiliary
    # classifier head with MSGAN's mode-seeking term (--d_ac true --ms_weight 1), its samples drawn from z truncated to
    # [-1.5, 1.5] (--truncation 1.5), was ahead of the plain recipe on both seeds, where no truncation and 2.0 were not
    # (BENCHMARKS.md, "Truncated z"). Every change tried on it and not adopted, with its figures and why: the sections
    # under "The second fmnist_32" and "The third fmnist_32" in BENCHMARKS.md.
    "fmnist_32": dict(_FMNIST, total_step=1800, lr_decay_step=1250, ema_start=1250, eval_step=600, model_save_step=600,
                      sample_step=600, ms_weight=1.0, truncation=1.5),
    # fmnist_32's class head with MSGAN's term at 0.3 in D's features (--d_ac true --ms_weight 0.3 --ms_space d), no
    # truncation, a wider G (16) for 6,000 steps, the rates halved and the EMA G from step 4,000, its decay 0.995 (a
    # 2,000-step tail has room for a longer average than fmnist_32's). The tuning figures chose the width, the decay and
    # the head with the term (ahead of the G 16 mean on all three figures on seeds 0, 2 and 3, behind on GAN-train on
    # seed 1; adopted when the fresh seeds 2 and 3 both passed), then TAC-GAN's twin head at a tenth of the paper's
    # weight (--d_tac true --tac_weight 0.1: at least 90% of samples in their class, every class at least 75%, and ahead
    # of the preset's mean GAN-train and distance on all four seeds; "TAC-GAN's twin classifier"). With the twin,
    # 12,000 steps (the tail from step 10,000) passed that rule on two seeds of four, so the length stays ("The twin
    # over 12,000 steps on seeds 1 and 2"). Then PacGAN's packing by label (--d_pack 2: D judges pairs of one label,
    # which raised recall on every seed and lost shirts) with three times the class head's weight in G's loss alone
    # (--ac_g_weight 3: it brings shirts back), over 16,000 steps with the tail from step 14,000: all four seeds passed
    # the rule (cls_acc2k >= 90%, every class >= 75% by the tuning classifier, and ahead of the 6,000-step recipe's
    # four-seed mean on gan_train_acc2k, fid_cls2k and cls_recall10k; BENCHMARKS.md, "PacGAN's packing, by label").
    # Over 12,000 steps the same flags passed on three seeds of four. Every change tried and not adopted, and why:
    # BENCHMARKS.md, "fmnist_32_long" and the sections below it.
    "fmnist_32_long": dict(_FMNIST, g_conv_dim=16, total_step=16000, lr_decay_step=14000, ema_start=14000, ema_decay=0.995,
                           ms_weight=0.3, ms_space="d", d_tac=True, tac_weight=0.1, d_pack=2, ac_g_weight=3.0,
                           eval_step=1000, model_save_step=1000, sample_step=1000),
    # The README's first command
    "demo": dict(dataset="shapes", imsize=32, g_conv_dim=8, d_conv_dim=16, global_batch=16, num_workers=0, version="shapes_demo",
                 total_step=3600, sample_step=600),
}


# Presets whose settings were chosen by a metric: which one (a choice made with one metric is reported
# with another; docs/evaluation.md). The independent classifier's figures chose nothing.
TUNED_WITH: dict[str, str] = {
    "fmnist_32": "the tuning classifier (cls_acc2k, gan_train_acc2k and fid_cls2k, and with them --truncation 1.5; classifier.py)",
    "fmnist_32_long": "the tuning classifier (cls_acc2k, gan_train_acc2k and fid_cls2k; classifier.py)",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), with the closest name for a mistyped choice."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            flag, got, options = m.groups()
            choices = [c.strip().strip("'") for c in options.split(",")]
            close = difflib.get_close_matches(got, choices, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            message = f"{flag}: unknown value {got!r}; {hint}choose from {', '.join(choices)}"
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Train or sample SAGAN (Zhang et al., ICML 2019). Flags by topic, each with its default; "
                    "docs/training.md explains them.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", type=str, default=None, choices=sorted(PRESETS),
                   help="a published run's settings (docs/reproducing.md); explicit flags override it")
    a = p.add_argument_group("model")
    a.add_argument("--model", type=str, default="sagan", choices=["sagan"], help="accepted for heykeetae compatibility; SAGAN is the model")
    a.add_argument("--arch", type=str, default="resnet", choices=ARCHS,
                   help="resnet: the paper's and the official code's blocks; dcgan: heykeetae's port's conv stack")
    a.add_argument("--imsize", type=int, default=64, choices=IMSIZES, help="image size in pixels (the architecture table of sagan_models.py)")
    a.add_argument("--z_dim", type=int, default=128, help="latent size")
    a.add_argument("--g_conv_dim", type=int, default=64, help="G width: channels of its last block (the paper's ch)")
    a.add_argument("--d_conv_dim", type=int, default=64, help="D width: channels of its first block")
    a.add_argument("--g_num", type=int, default=5, help="accepted for heykeetae compatibility; it had no effect there either")
    a.add_argument("--g_attn", type=resolutions, default=None, metavar="RES[,RES]|none",
                   help="G feature resolutions with attention (default: per image size)")
    a.add_argument("--d_attn", type=resolutions, default=None, metavar="RES[,RES]|none",
                   help="D feature resolutions with attention (default: per image size)")
    a.add_argument("--attn_variant", type=str, default="official", choices=ATTN_VARIANTS,
                   help="official: keys and values max-pooled 2x2, C/8 and C/2 channels (the official code); paper: Eq. 1-3 as written")
    a.add_argument("--attn_block", type=str, default="attention", choices=ATTN_BLOCKS,
                   help="residual: a parameter-matched residual block at the attention resolutions (the paper's Table 1 control)")
    a.add_argument("--span", type=int, default=0, help="non-local span: each query ignores keys within this Chebyshev distance (0: plain SAGAN)")
    a.add_argument("--num_classes", type=int, default=-1, help="-1: from the dataset; 0: unconditional")
    a.add_argument("--g_sn", type=str2bool, default=True, help="spectral norm on G (D always has it)")
    a.add_argument("--cbn_sn", type=str2bool, default=False, help="spectral norm on G's conditional-BN tables (StudioGAN)")
    a.add_argument("--init", type=str, default="xavier", choices=INITS, help="weight initialisation (official: xavier; StudioGAN: ortho)")
    a.add_argument("--bn_eps", type=float, default=1e-5, help="batch-norm eps in G (official/BigGAN 1e-5; StudioGAN/MMGeneration 1e-4)")
    a.add_argument("--sn_eps", type=float, default=1e-12, help="spectral-norm eps")
    a.add_argument("--d_relu_shortcut", type=str2bool, default=False,
                   help="D's block shortcut receives relu(x) (StudioGAN's in-place ReLU; MMGeneration's 'inplace ReLU' rows)")
    a.add_argument("--d_mbstd", type=non_negative, default=0, metavar="GROUP",
                   help="resnet: a minibatch-standard-deviation feature map (ProGAN/StyleGAN2) over groups of GROUP images "
                        "before D's last block (not in SAGAN; 0: off)")
    a.add_argument("--d_pack", type=positive, default=1, metavar="M",
                   help="PacGAN: D judges packs of M images of one label stacked on channels, one logit per pack (not in "
                        "SAGAN; 1: one image, as SAGAN)")
    a.add_argument("--g_shared_dim", type=non_negative, default=0, metavar="DIM",
                   help="resnet, labelled data: one shared class embedding of DIM that bias-free linear layers map to each "
                        "conditional BN's gain and bias (BigGAN; 0: a class table per BN, as SAGAN)")
    a.add_argument("--g_hier", type=str2bool, default=False,
                   help="with --g_shared_dim: split z into equal chunks, one for G's first layer and one appended to the "
                        "class embedding of each G block (BigGAN's hierarchical latent)")
    a.add_argument("--d_ac", type=str2bool, default=False,
                   help="labelled data: an auxiliary classifier head in D beside the projection (ACGAN; not in SAGAN), "
                        "trained on real images and steering G's fakes toward their labels (see --ac_weight)")
    a.add_argument("--d_tac", type=str2bool, default=False,
                   help="with --d_ac: TAC-GAN's twin classifier head, which learns the fakes' labels while G plays "
                        "against it, to keep ACGAN's head from narrowing each class (not in SAGAN)")
    a.add_argument("--sn_layers", type=str, default="all", choices=SN_LAYERS,
                   help="dcgan: spectral norm on every layer (all, the paper) or on the up/down convs only (port, heykeetae)")
    a.add_argument("--convt_sn_dim", type=int, default=1, choices=CONVT_SN_DIMS,
                   help="dcgan: ConvTranspose spectral-norm matrix, 1 = (out, in*k*k) as torch, 0 = (in, out*k*k) as heykeetae")

    t = p.add_argument_group("training")
    t.add_argument("--adv_loss", type=str, default="hinge", choices=LOSSES, help="adversarial loss (the paper: hinge)")
    t.add_argument("--lambda_gp", type=float, default=10.0, help="gradient-penalty weight with --adv_loss wgan-gp")
    t.add_argument("--version", type=str, default="sagan_1", help="run name: folders <path>/<version>/")
    t.add_argument("--total_step", type=positive_step, default=1_000_000, help="generator steps")
    t.add_argument("--d_iters", "--n_dis", dest="n_dis", type=positive_step, default=1, help="D steps per G step")
    t.add_argument("--batch_size", type=positive, default=64, help="images per process per micro-batch (see --accum)")
    t.add_argument("--num_workers", type=workers_value, default=None,
                   help="loader worker processes (default auto: 0 for in-memory datasets, else the usable CPUs per local "
                        "process, at most 16)")
    t.add_argument("--g_lr", type=float, default=1e-4, help="G learning rate (TTUR: the paper's 1e-4)")
    t.add_argument("--d_lr", type=float, default=4e-4, help="D learning rate (TTUR: the paper's 4e-4)")
    t.add_argument("--lr_decay", type=float, default=1.0, help="multiply both learning rates by this every --lr_decay_step steps")
    t.add_argument("--lr_decay_step", type=positive_step, default=10_000, help="steps between learning-rate decays (see --lr_decay); a resume follows a changed value")
    t.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (the paper: 0)")
    t.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (the official code: 0.999; the paper: 0.9)")
    t.add_argument("--adam_eps", type=float, default=1e-8, help="Adam eps (torch, official, MMGeneration 1e-8; StudioGAN 1e-6)")
    t.add_argument("--flip", type=str2bool, default=False, help="random horizontal flips of real images")
    t.add_argument("--diffaug", type=diffaug_policy, default="", metavar="POLICY",
                   help="DiffAugment for D (augment.py): a comma-separated list of color, translation, cutout applied to "
                        "every image D sees, real or fake, in both updates ('': off)")
    t.add_argument("--ms_weight", type=non_negative_float, default=0.0, metavar="W",
                   help="MSGAN's mode-seeking term for G (Mao et al. 2019): G's batch in pairs of one label and two z, and "
                        "W / (image distance / latent distance) added to G's loss (0: off; MSGAN's conditional runs: 1)")
    t.add_argument("--ms_space", choices=MS_SPACES, default="image",
                   help="where --ms_weight measures the distance between a pair's samples: image (MSGAN's pixels) or d "
                        "(D's pooled features, each batch scaled to unit RMS; not in MSGAN)")
    t.add_argument("--cr_weight", type=non_negative_float, default=0.0, metavar="W",
                   help="consistency regularization (CR-GAN, Zhang et al. 2020): W x the mean squared change of D's output "
                        "on real images shifted by up to 1/8 of the side (and mirrored with --flip) joins D's loss "
                        "(0: off; CR-GAN and bCR: 10)")
    t.add_argument("--cr_fake_weight", type=non_negative_float, default=0.0, metavar="W",
                   help="bCR's term on fakes (Zhao et al. 2021): the same penalty on G's images (0: off; bCR: 10, "
                        "with --cr_weight 10)")
    t.add_argument("--ac_weight", type=non_negative_float, default=1.0, metavar="W",
                   help="with --d_ac: W x the cross-entropy of D's class head on real images joins D's loss, and on G's "
                        "fakes against their labels G's loss (StudioGAN's ACGAN weight: 1)")
    t.add_argument("--ac_g_weight", type=non_negative_float, default=None, metavar="W",
                   help="with --d_ac: the class head's weight in G's loss alone, where D's keeps --ac_weight (not in ACGAN; "
                        "default: --ac_weight)")
    t.add_argument("--tac_weight", type=non_negative_float, default=1.0, metavar="W",
                   help="with --d_tac: W x the twin head's cross-entropy on fakes joins D's loss and is subtracted from "
                        "G's (TAC-GAN and StudioGAN: 1)")
    t.add_argument("--seed", type=seed_value, default=0, help="seed of the models' initialisation, the data order and the noise")
    t.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--parallel", type=str2bool, default=False, help="DataParallel over all visible GPUs (one process; prefer torchrun)")

    s = p.add_argument_group("scale (torchrun, EMA, accumulation)")
    s.add_argument("--accum", type=positive_step, default=1,
                   help="micro-batches of --batch_size per optimizer step (global batch = batch_size x accum x processes)")
    s.add_argument("--sync_bn", type=str2bool, default=False, help="under torchrun on CUDA: batch-norm statistics over all processes")
    s.add_argument("--ema", type=str2bool, default=False, help="keep an EMA generator; samples, attention maps and metrics use it")
    s.add_argument("--ema_decay", type=fraction, default=0.9999, help="EMA decay per G step")
    s.add_argument("--ema_start", type=non_negative, default=2000, help="steps before which the EMA generator is a copy of G")
    s.add_argument("--standing_stats", type=non_negative, default=0, metavar="N",
                   help="before sampling and evaluation, recompute the sampling G's batch-norm statistics over N batches of "
                        "--eval_batch_size (BigGAN's standing statistics; 0: keep the running averages)")
    s.add_argument("--truncation", type=non_negative_float, default=0.0, metavar="T",
                   help="sample grids, evaluations and --sample_dir draw each coordinate of z from N(0, 1) truncated to "
                        "[-T, T] (BigGAN's truncation trick: fewer, more typical samples; training's z is never truncated; "
                        "metrics named e.g. fid10k_trunc1.5; 0: off)")
    s.add_argument("--drs", type=percentile, default=0.0, metavar="Q",
                   help="with --train false: keep each sample of G with the probability D's logit gives it (discriminator "
                        "rejection sampling, drs.py), gamma at the Q-th percentile of F in each batch of candidates; the "
                        "evaluation, --sample_dir and the figures use the kept samples (metrics named e.g. fid10k_drs80; "
                        "training's own evaluations score G alone; 0: off)")

    f = p.add_argument_group("speed")
    f.add_argument("--attn_backend", type=str, default="sdpa", choices=ATTN_BACKENDS,
                   help="sdpa: fused scaled_dot_product_attention; math: explicit softmax(QK^T)V (the reference)")
    f.add_argument("--tf32", type=str2bool, default=None,
                   help="CUDA: TF32 for fp32 matmuls and cuDNN convolutions, true or false (default: torch's own, "
                        "off for matmuls and on for convolutions)")
    f.add_argument("--amp", type=str, default="off", choices=("off", "bf16", "fp16"),
                   help="autocast dtype for the forward passes (fp16 adds a gradient scaler on CUDA)")
    f.add_argument("--channels_last", type=str2bool, default=False, help="NHWC memory format for G, D and the images")
    f.add_argument("--compile", type=str2bool, default=False, help="torch.compile the training-mode G and D")

    m = p.add_argument_group("run")
    m.add_argument("--pretrained_model", type=optional_step, default=None, help=f"checkpoint to resume or sample from: a step, 'latest' or {', '.join(NAMED_CHECKPOINTS)}; or an "
                        "exported folder or hf://USER/REPO (export.py) to sample from or fine-tune (its weights; fresh optimizers)")
    m.add_argument("--train", type=str2bool, default=True, help="false: load --pretrained_model (default latest), write a sample grid, and evaluate or write samples if asked")
    m.add_argument("--dry_run", action="store_true", help="print the resolved config and parameter counts, then exit")

    d = p.add_argument_group("data")
    d.add_argument("--dataset", type=str, default="shapes", choices=[*DATASETS, *ALIASES],
                   help="; ".join(f"{name}: {info.what}" for name, info in DATASETS.items()) + " (data_loader.DATASETS)")
    d.add_argument("--image_path", type=str, default="./data", help="root folder of the datasets")
    d.add_argument("--data_dir", type=str, default=None, help="explicit dataset folder (overrides the layout under --image_path)")
    d.add_argument("--lsun_category", type=str, default="church_outdoor", help="with --dataset lsun: the scene category")
    d.add_argument("--full_decode", type=str2bool, default=False, nargs="?", const=True,
                   help="decode every JPEG at full size (default: large JPEGs are decoded at reduced size, then resized)")
    d.add_argument("--data_cache", type=str, default=None, metavar="FOLDER",
                   help="decode the images once into a uint8 file in FOLDER and read them from it (celeb, lsun, imagenet, folder; "
                        "N x 3 x imsize^2 bytes, e.g. 63 GB for ImageNet at 128 px)")
    d.add_argument("--max_images", type=non_negative, default=0, help="use only the first N images of the dataset (0: all)")

    o = p.add_argument_group("output")
    o.add_argument("--use_tensorboard", type=str2bool, default=True, help="write losses, samples and metrics to TensorBoard under --log_path")
    o.add_argument("--log_path", type=str, default="./logs", help="TensorBoard event files go to <log_path>/<version>/")
    o.add_argument("--model_save_path", type=str, default="./models",
                   help="checkpoints, metrics.jsonl and training_options.json go to <model_save_path>/<version>/")
    o.add_argument("--sample_path", type=str, default="./samples", help="sample grids go to <sample_path>/<version>/")
    o.add_argument("--attn_path", type=str, default="./attn", help="attention figures go to <attn_path>/<version>/")
    o.add_argument("--log_step", type=positive_step, default=10, help="print and log the losses every K steps")
    o.add_argument("--sample_step", type=positive_step, default=100, help="write a sample grid and attention figures every K steps")
    o.add_argument("--model_save_step", type=positive_step, default=1000, help="save a checkpoint every K steps (and at the last step)")
    o.add_argument("--keep_last", type=non_negative, default=0, help="keep only the newest K step checkpoints (0: all; best_* are always kept)")

    v = p.add_argument_group("visualisation (visualize.py)")
    v.add_argument("--attn_samples", type=non_negative, default=4, help="attention figures per --sample_step (0: none)")
    v.add_argument("--attn_points", type=str, default=None, metavar="X,Y;X,Y",
                   help="query pixels for attention figures (default: the centre and four points around it)")
    v.add_argument("--classes", type=str, default=None, metavar="C,C", help="with --train false: rows of the class grid (default: all, at most 16)")
    v.add_argument("--interp_steps", type=positive_step, default=8, help="with --train false: columns of the interpolation grid")
    v.add_argument("--interp_rows", type=positive_step, default=4, help="with --train false: seed pairs in the interpolation grid")
    v.add_argument("--attn_html", type=str2bool, default=False,
                   help="with --train false: write attn/<version>/<step>_explorer.html, where pointing at any pixel of a sample shows "
                        "every attention layer's weights (explorer.py); --attn_samples per class of --classes (default: up to 4)")

    e = p.add_argument_group("evaluation (metrics.py)")
    e.add_argument("--eval_step", type=non_negative, default=0, help="evaluate every K steps during training, Inception or classifier metrics by --eval_metric (0: off)")
    e.add_argument("--eval_samples", type=positive, default=None,
                   help="generated samples per evaluation (training: 10000 when unset); with --train false, evaluate the checkpoint")
    e.add_argument("--eval_ref_samples", type=non_negative, default=50_000, help="real training images in the reference set (0: all)")
    e.add_argument("--eval_batch_size", type=positive_step, default=64, help="batch size of sampling and of the metric networks")
    e.add_argument("--eval_metric", type=str, default="auto", choices=("auto", "inception", "classifier"),
                   help="inception: IS/FID/KID/PR; classifier: cls_acc/gan_train_acc/fid_cls from a classifier trained on the "
                        "real labelled images (shapes, fashion_mnist); auto: inception when its weights are found, else classifier")
    e.add_argument("--inception_weights", type=str, default=None,
                   help="TF-Inception 2015-12-05 weights (default: $SAGAN_INCEPTION_WEIGHTS or <image_path>/" + WEIGHTS_NAME + ")")
    e.add_argument("--eval_cache_dir", type=str, default=None, help="reference-statistics cache (default: $SAGAN_CACHE_DIR or ~/.cache/sagan)")
    e.add_argument("--eval_dir", type=str, default=None, help="with --train false: score the images in this folder instead of a checkpoint")
    e.add_argument("--eval_json", type=str, default=None, help="where --train false writes the evaluation JSON (default: next to the checkpoint or folder)")
    e.add_argument("--sample_dir", type=str, default=None, help="with --train false: write --sample_num generated PNGs here")
    e.add_argument("--sample_num", type=positive_step, default=10_000, help="with --sample_dir: how many PNGs")
    return p


_UNSET = object()


def explicit_flags(argv: Sequence[str] | None) -> set[str]:
    """Destinations of the flags given on the command line (not defaults, not preset values)."""
    p = build_parser()
    p.set_defaults(**{a.dest: _UNSET for a in p._actions if a.dest != "help"})
    return {k for k, v in vars(p.parse_args(argv)).items() if v is not _UNSET}


def split_global_batch(args: argparse.Namespace, processes: int) -> None:
    """With a preset's global batch (and no explicit --batch_size): batch_size = global / (processes x accum)."""
    if not args.global_batch:
        return
    parts = processes * args.accum
    if args.global_batch % parts:
        raise ValueError(f"--preset {args.preset}: global batch {args.global_batch} is not divisible by {processes} processes "
                         f"x --accum {args.accum}; pass --batch_size explicitly")
    args.batch_size = args.global_batch // parts


def refuse_orphan(p: argparse.ArgumentParser, args: argparse.Namespace, given: set[str], dep: str, dep_off: str,
                  base: str, base_on: str, what: str, needs: str) -> NoReturn:
    """One error line for a setting `dep` that only means something with `base` on, while `base` is off. The advice
    names the flag to change: `dep` itself when it was typed (dropping it is enough unless the preset sets it
    too), else the preset that set it (the user turned `base` off, so they are told how to turn `dep` off too)."""
    dep_now, base_now = flag_text(vars(args)[dep]), flag_text(vars(args)[base])
    if dep in given:
        undo = f"set --{dep} {dep_off}" if dep in PRESETS.get(args.preset or "", {}) else f"drop --{dep}"
        p.error(f"--{dep} {dep_now} {what}, and --{base} is {base_now}: add --{base} {base_on} or {undo}")
    p.error(f"--preset {args.preset} sets --{dep} {dep_now}, which {needs}: with --{base} {base_now} add --{dep} {dep_off}")


def flag_text(value: object) -> str:
    """A flag's value as it is typed on the command line: booleans in lower case, lists joined by commas, floats
    in the shortest form that reads back the same (0 for 0.0); '' for an empty list."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def get_parameters(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse flags; with --preset, its values replace the defaults (explicit flags still win). The
    preset's global batch is kept as `args.global_batch` (None without a preset, or with an explicit
    --batch_size) and split for one process here (main.py splits it again under torchrun); `args.version`
    defaults to the preset's name."""
    p = build_parser()
    args = p.parse_args(argv)
    global_batch = None
    if args.preset:
        preset = dict(PRESETS[args.preset])
        global_batch = preset.pop("global_batch", None)
        preset.setdefault("version", args.preset)
        p.set_defaults(**preset)
        args = p.parse_args(argv)
    given = explicit_flags(argv)
    args.global_batch = global_batch if global_batch and "batch_size" not in given else None
    try:
        split_global_batch(args, 1)
    except ValueError as e:
        p.error(str(e))
    args.dataset = ALIASES.get(args.dataset, args.dataset)
    if args.parallel and args.amp != "off":
        p.error(f"--amp {args.amp} with --parallel: DataParallel's replicas would run in fp16 with no gradient scaler; for "
                f"several GPUs use torchrun --nproc_per_node N main.py ... --amp {args.amp} (docs/training.md, 'Many GPUs')")
    for flag, where in (("ac_weight", ""), ("ac_g_weight", " in G's loss")):
        if not args.d_ac and flag in given:
            p.error(f"--{flag} weighs the class loss of D's auxiliary classifier head{where}, which is off: add --d_ac true "
                    f"or drop --{flag}")
    if not args.d_tac and "tac_weight" in given:
        p.error("--tac_weight weighs the twin classifier head's terms, which is off: add --d_tac true or drop --tac_weight")
    if args.d_tac and not args.d_ac:
        refuse_orphan(p, args, given, "d_tac", "false", "d_ac", "true", "adds a twin to D's auxiliary classifier head",
                      "needs D's auxiliary classifier head")
    if args.ms_space != "image" and not args.ms_weight:
        refuse_orphan(p, args, given, "ms_space", "image", "ms_weight", "W (e.g. 1)",
                      "sets where --ms_weight's term measures distance", "needs MSGAN's term on")
    if args.ms_weight and args.batch_size % 2:
        p.error(f"--ms_weight pairs G's batch in halves, so --batch_size must be even, got {args.batch_size}")
    group = args.d_pack * (2 if args.ms_weight else 1)  # MSGAN's two halves each hold whole packs
    if args.d_pack > 1 and args.batch_size % group:
        halves = " halves of" if args.ms_weight else ""
        p.error(f"--d_pack {args.d_pack} packs the{halves} G batch in groups of {args.d_pack}, so --batch_size must be a multiple "
                f"of {group}, got {args.batch_size}")
    if args.drs and args.eval_dir:
        p.error(f"--drs {args.drs:g} keeps or rejects a checkpoint's samples by its D; a folder of images (--eval_dir) has no D: "
                f"drop one of the two")
    if args.eval_samples is not None and args.eval_samples < MIN_EVAL_SAMPLES:
        p.error(f"argument --eval_samples: expected a number >= {MIN_EVAL_SAMPLES} (IS uses 10 splits, and the classifier metric "
                f"needs 10 samples), got {args.eval_samples}")
    if args.train and args.attn_points:
        from visualize import parse_points

        try:
            parse_points(args.attn_points, args.imsize)
        except ValueError as e:
            p.error(f"argument --attn_points: {e} (x and y from 0 to {args.imsize - 1})")
    return args


# ----------------------------------------------------------------------------------------------
# The namespace stops here: the other modules take these


def model_config(args: argparse.Namespace, num_classes: int) -> ModelConfig:
    """The model the flags describe, for a dataset of `num_classes` classes (0: unconditional)."""
    return ModelConfig(**{f.name: vars(args)[f.name] for f in fields(ModelConfig) if f.name != "num_classes"},
                       num_classes=num_classes).resolved()


def data_spec(args: argparse.Namespace) -> DataSpec:
    return DataSpec(**{f.name: vars(args)[f.name] for f in fields(DataSpec)})


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The Trainer's options: the flags of the same names (--ac_g_weight, unset, is --ac_weight), and all flags as
    parsed (saved with every checkpoint)."""
    given = {f.name: vars(args)[f.name] for f in fields(TrainOptions) if f.name != "flags"}
    if given["ac_g_weight"] is None:
        given["ac_g_weight"] = args.ac_weight
    return TrainOptions(**given, flags=dict(vars(args)))
