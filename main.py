"""Entry point: `python main.py [flags]` trains SAGAN; `--train false` samples from a checkpoint;
`--dry_run` prints the resolved configuration and the parameter counts.

Expected problems (a missing dataset, an impossible flag combination, a missing or mismatched
checkpoint, a diverged run) end with one line on stderr that says what to do, and exit code 2.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path
from typing import Sequence

from data_loader import DatasetError, build_dataset, class_folders, get_loader
from parameter import get_parameters
from sagan_models import Discriminator, Generator, ModelConfig, count_params
from trainer import CheckpointError, Trainer, checkpoint_path, load_checkpoint, model_config, resolve_device

# Classes per dataset when it is not read (dry runs): ILSVRC2012 has 1000.
KNOWN_CLASSES = {"shapes": 4, "cifar10": 10, "celeb": 0, "lsun": 0, "imagenet": 1000}


def resolve_num_classes(args: Namespace, dataset_classes: int) -> int:
    """--num_classes -1 takes the dataset's; 0 trains unconditionally; any other value must match the data."""
    if args.num_classes < 0:
        return dataset_classes
    if args.num_classes > 0 and args.num_classes != dataset_classes:
        have = f"{dataset_classes} classes" if dataset_classes else "no labels"
        raise ValueError(f"--num_classes {args.num_classes} does not fit dataset {args.dataset!r}, which has {have}; "
                         f"use --num_classes -1 (from the dataset) or 0 (unconditional)")
    return args.num_classes


def dry_run(args: Namespace) -> int:
    if args.dataset in KNOWN_CLASSES:
        classes = KNOWN_CLASSES[args.dataset]
    else:
        classes = len(class_folders(Path(args.data_dir or args.image_path))[2])
        classes = classes if classes >= 2 else 0
    cfg = model_config(args, resolve_num_classes(args, classes))
    g, d = Generator(cfg), Discriminator(cfg)
    print(json.dumps({"model_config": cfg.to_dict(), "args": vars(args)}, indent=2, default=str))
    print(f"G parameters: {count_params(g):,}")
    print(f"D parameters: {count_params(d):,}")
    return 0


def sample(args: Namespace) -> int:
    """Load a checkpoint (its own model config) and write the fixed-noise sample grid."""
    folder = Trainer.run_folders(args)["models"]
    path = checkpoint_path(folder, args.pretrained_model or "latest")
    cfg = ModelConfig.from_dict(load_checkpoint(path)["model_config"])
    trainer = Trainer(args, cfg)
    trainer.load(path.stem, restore_training=False)
    out, _ = trainer.sample_grid(trainer.run["samples"] / f"{trainer.step}_sample.png")
    print(f"loaded {path} (step {trainer.step}); wrote {out}")
    return 0


def train(args: Namespace) -> int:
    device = resolve_device(args.device)
    dataset, classes = build_dataset(args)
    cfg = model_config(args, resolve_num_classes(args, classes))
    loader = get_loader(args, dataset, device)
    trainer = Trainer(args, cfg, loader)
    if args.pretrained_model:
        path = trainer.load(args.pretrained_model)
        print(f"resumed from {path} at step {trainer.step}", flush=True)
    print(f"training {args.version}: {args.dataset} ({len(dataset)} images, {cfg.num_classes} classes), "
          f"{cfg.arch} {cfg.imsize} px, G {count_params(trainer.G):,} / D {count_params(trainer.D):,} parameters, "
          f"attention G@{list(cfg.g_attn)} D@{list(cfg.d_attn)}, {device}", flush=True)
    trainer.train()
    print(f"done: step {trainer.step}; samples in {trainer.run['samples']}, checkpoints in {trainer.run['models']}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parameters(argv)
    try:
        if args.dry_run:
            return dry_run(args)
        if not args.train:
            return sample(args)
        return train(args)
    except (DatasetError, CheckpointError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
