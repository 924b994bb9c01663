"""Entry point: `python main.py [flags]` trains SAGAN (scoring it every --eval_step steps);
`--train false` samples from a checkpoint and, with --eval_samples N, scores it (or, with --eval_dir,
scores a folder of images); `--dry_run` prints the resolved configuration and the parameter counts.

Expected problems (a missing dataset, an impossible flag combination, a missing or mismatched
checkpoint, a diverged run, an inconsistent torchrun environment) end with one line on stderr that
says what to do, and exit code 2. SIGTERM/SIGINT save a checkpoint at the current step and exit 3.
Under `torchrun --nproc_per_node N main.py ...` every process trains; rank 0 prints and writes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from argparse import Namespace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

import distributed
import progress
import visualize
from checkpoints import (CheckpointError, LoadedGenerator, RunLock, check_writable, discriminator_from, generator_from, is_export,
                         open_weights, step_numbers)
from classifier import SEED as CLASSIFIER_SEED, ClassifierEvaluator
from data_loader import (DatasetError, build_dataset, build_test_split, class_folders, classifier_datasets, close_loader, dataset_info,
                         get_loader, workers_for)
from distributed import LaunchError, resolve_device
from durable import write_json, write_text
from metrics import WEIGHTS_ENV, EvalError, Evaluator, cache_root, metric_tag, resolve_weights, write_samples
from parameter import TUNED_WITH, data_spec, get_parameters, model_config, split_global_batch, train_options
from sagan_models import Discriminator, Generator, count_params, draw_latents, standing_stats
from trainer import Preempted, StopRecorder, Trainer, cpu_bf16_units, seed_everything


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
    classes = dataset_info(args.dataset).num_classes  # the data is not read: the registry's count
    if classes is None:
        classes = len(class_folders(Path(args.data_dir or args.image_path))[2])
        classes = classes if classes >= 2 else 0
    cfg = model_config(args, resolve_num_classes(args, classes))
    g, d = Generator(cfg), Discriminator(cfg)
    print(json.dumps({"model_config": cfg.to_dict(), "args": vars(args)}, indent=2, default=str))
    print(f"G parameters: {count_params(g):,}")
    print(f"D parameters: {count_params(d):,}")
    return 0


def build_evaluator(args: Namespace, device: torch.device, dataset: Dataset | None = None) -> "Evaluator | ClassifierEvaluator":
    """The Inception metrics (weights first: a missing file fails before any data is read or sampled, then
    the cached reference statistics of the training set), or the offline classifier metric for labelled
    datasets with a held-out split (`--eval_metric`; auto picks Inception when its weights are found)."""
    kind = args.eval_metric
    name = f"lsun_{args.lsun_category}" if args.dataset == "lsun" else args.dataset
    weights = None
    if kind in ("auto", "inception"):
        try:
            weights = resolve_weights(args.inception_weights, args.image_path)
        except EvalError:
            named = args.inception_weights or os.environ.get(WEIGHTS_ENV)  # a file named but missing is an error
            if kind == "inception" or named or args.dataset not in classifier_datasets():
                raise
    if dataset is None:
        dataset, _ = build_dataset(data_spec(args))
    if weights is not None:
        return Evaluator(dataset, name, args.imsize, weights, device, cache_root(args.eval_cache_dir),
                         args.eval_ref_samples, args.eval_batch_size, workers_for(args.num_workers, dataset), args.truncation)
    test = build_test_split(data_spec(args))
    if test is None:
        raise EvalError(f"the classifier metric needs a labelled dataset with a held-out split ({', '.join(classifier_datasets())}); "
                        f"{args.dataset} has none: use --eval_metric inception with Inception weights (bash download.sh inception)")
    return ClassifierEvaluator(dataset, test, name, args.imsize, test.num_classes, device,
                               cache_root(args.eval_cache_dir), args.eval_ref_samples, args.eval_batch_size, CLASSIFIER_SEED,
                               args.truncation)


def report(result: dict, json_path: Path, evaluator: "Evaluator | ClassifierEvaluator") -> None:
    """Print the evaluation table and write it as JSON (atomically)."""
    print(evaluator.format(result))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(json_path, result)
    print(f"wrote {json_path}")


def evaluate_folder(args: Namespace) -> int:
    """`--train false --eval_dir DIR`: score a folder of images against the training set."""
    folder = Path(args.eval_dir)
    evaluator = build_evaluator(args, resolve_device(args.device))
    result = evaluator.folder(folder)
    out = Path(args.eval_json) if args.eval_json else folder.parent / f"{folder.name}_eval_{metric_tag(result['metrics'])}.json"
    report(result, out, evaluator)
    return 0


# Dataset flags that `--train false` takes from the checkpoint, so that the reference set is the
# training set; where the data lives (--image_path, --data_dir) still comes from the command line.
TRAINING_DATA_FLAGS = ("dataset", "lsun_category", "max_images", "imsize")


def sample(args: Namespace) -> int:
    """Load a checkpoint's generator (its own model config; checkpoints.load_generator), write the fixed-noise
    sample grid, the figures of look_inside and, if asked, --sample_num PNGs into --sample_dir and an
    evaluation on --eval_samples samples."""
    if args.eval_dir:
        return evaluate_folder(args)
    run = train_options(args).folders
    device = resolve_device(args.device)
    path, ckpt = open_weights(run["models"], args.pretrained_model or "latest")  # read once, for G and (explorer) D
    loaded = generator_from(path, ckpt, device)
    D = discriminator_from(path, ckpt, device) if args.attn_html or args.drs else None
    if D is not None and D.cfg.d_pack > 1:
        flag, wants = ("--drs", "scores") if args.drs else ("--attn_html", "shows D's attention on")
        raise ValueError(f"{flag} {wants} single images, and this D judges packs of {D.cfg.d_pack} (--d_pack {D.cfg.d_pack}, "
                         f"PacGAN): drop {flag}")
    del ckpt
    G, step = loaded.G, loaded.step
    for k in TRAINING_DATA_FLAGS:
        if k in loaded.flags:
            setattr(args, k, loaded.flags[k])
    evaluator = build_evaluator(args, device) if args.eval_samples is not None else None
    seed_everything(args.seed)
    if args.standing_stats:
        G = standing_stats(G, args.standing_stats, args.eval_batch_size, seed=args.seed)
    sampler = rejection_sampler(G, D, evaluator, args) if args.drs else None
    if evaluator is not None:
        evaluator.drs = sampler
    z, y = visualize.fixed_noise(loaded.config, args.seed + 1, device, args.truncation)
    out = run["samples"] / f"{step}_sample.png"
    visualize.write_sample_grid(G, z, y, out)
    origin = f", converted from {loaded.source['format']}" if loaded.source else ""
    print(f"loaded {path} (step {step}{origin}; sampling {'the EMA generator' if loaded.ema else 'G'}); wrote {out}")
    written = visualize.attention_snapshot(G, z, y, args.attn_samples, args.attn_points, run["attn"], str(step))
    if args.attn_html:
        written.append(write_explorer(G, D, loaded, run["attn"] / f"{step}_explorer.html", args))
    for p in written + look_inside(G, step, run["samples"], args):
        print(f"wrote {p}")
    if args.sample_dir:
        written = write_samples(G, Path(args.sample_dir), args.sample_num, args.eval_batch_size, truncation=args.truncation,
                                drs=sampler)
        print(f"wrote {len(written)} samples to {args.sample_dir}")
    if evaluator is not None:
        result = evaluator(G, args.eval_samples, source=f"{path} (step {step})")
        preset = loaded.flags.get("preset")
        if preset in TUNED_WITH:
            result["tuned_with"] = f"--preset {preset} was tuned with {TUNED_WITH[preset]}"
            print(f"note: {result['tuned_with']}; the independent classifier chose nothing")
        tag = metric_tag(result["metrics"])
        report(result, Path(args.eval_json) if args.eval_json else run["models"] / f"eval_{path.stem}_{tag}.json", evaluator)
        if isinstance(evaluator, ClassifierEvaluator):  # labelled data at hand: each class's samples beside real images
            figure = run["samples"] / f"{step}_vs_real.png"
            classes = parse_classes(args.classes, loaded.config.num_classes)
            fake = visualize.class_grid(G, classes, seed=args.seed, truncation=args.truncation, drs=sampler)
            visualize.versus_real(G, evaluator.dataset, classes, seed=args.seed, fake=fake).save(figure)
            print(f"wrote {figure}")
    return 0


def rejection_sampler(G: nn.Module, D: nn.Module, evaluator: "Evaluator | ClassifierEvaluator | None",
                      args: Namespace) -> "drs.RejectionSampler":
    """`--drs Q`: DRS (drs.py) for G with its own D, calibrated on real training images (the evaluator's, or read
    here when nothing is evaluated). Prints the calibration."""
    import drs

    dataset = evaluator.dataset if evaluator is not None else build_dataset(data_spec(args))[0]
    sampler = drs.RejectionSampler(G, D, *drs.real_images(dataset, G.cfg.num_classes), args.drs, args.eval_batch_size,
                                   args.truncation)
    print(f"DRS at the {args.drs:g}th percentile: D's logit calibrated on {sampler.calibration:,} real training images and "
          f"as many samples (mean {sampler.real_mean:.3f} and {sampler.fake_mean:.3f}; Platt scale {sampler.scale:.3f})")
    return sampler


def write_explorer(G: nn.Module, D: nn.Module, loaded: LoadedGenerator, path: Path, args: Namespace) -> Path:
    """The attention explorer (explorer.py): --attn_samples samples (at least 1) per class of --classes (default up
    to 4 classes spread evenly), or of an unconditional G, with D's attention on the same samples."""
    import explorer

    k, cfg = max(args.attn_samples, 1), loaded.config
    classes = parse_classes(args.classes, cfg.num_classes) if args.classes else visualize.class_rows(cfg.num_classes, 4)
    g = torch.Generator().manual_seed(args.seed + 2)
    z = draw_latents(k * max(len(classes), 1) if cfg.num_classes else k, cfg.z_dim, g, args.truncation)
    z = z.to(next(G.parameters()).device)
    y = torch.tensor(classes).repeat_interleave(k).to(z.device) if cfg.num_classes else None
    names = list(dataset_info(loaded.flags.get("dataset", "folder")).class_names)
    data = explorer.explorer_data(G, D, z, y, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, explorer.explorer_html(data, f"{args.version}, step {loaded.step}: attention explorer"))
    return path


def parse_classes(spec: str | None, num_classes: int) -> list[int]:
    """--classes 'c,c,...', or up to 16 classes spread evenly over all of them."""
    if spec:
        try:
            return [int(c) for c in spec.split(",") if c.strip()]
        except ValueError:
            raise ValueError(f"--classes expects comma-separated class indices such as 0,3,7, got {spec!r}")
    return visualize.class_rows(num_classes)


def look_inside(G: nn.Module, step: int, folder: Path, args: Namespace) -> list[Path]:
    """A class grid (when conditional) and an interpolation grid of G's samples into `folder`."""
    from torchvision.utils import save_image

    written = []
    classes = parse_classes(args.classes, G.cfg.num_classes) if G.cfg.num_classes else None
    if classes is not None:
        grid = visualize.class_grid(G, classes, columns=8, seed=args.seed, truncation=args.truncation)
        save_image(grid * 0.5 + 0.5, folder / f"{step}_classes.png", nrow=8, padding=2)
        written.append(folder / f"{step}_classes.png")
    pairs = [(args.seed + 2 * r, args.seed + 2 * r + 1) for r in range(args.interp_rows)]
    grid = visualize.interpolation_grid(G, pairs, args.interp_steps, classes, args.truncation)
    save_image(grid * 0.5 + 0.5, folder / f"{step}_interp.png", nrow=args.interp_steps, padding=2)
    written.append(folder / f"{step}_interp.png")
    return written


def train(args: Namespace) -> int:
    """Train in this process, or as one process of a torchrun launch (rank 0 prints and writes)."""
    env = distributed.launch_env()
    device = distributed.device_for(env, args.device)
    say = print if env.is_main else (lambda *a, **k: None)
    split_global_batch(args, env.world)  # a preset's global batch, over the processes
    folders = train_options(args).folders
    if not env.is_main:
        with StopRecorder() as stops:
            return train_in(args, env, device, say, stops)
    for key, flag in (("models", "--model_save_path"), ("samples", "--sample_path"), ("logs", "--log_path"), ("attn", "--attn_path")):
        check_writable(folders[key], flag)
    with RunLock(folders["models"]), StopRecorder() as stops:  # one run per --version; signals recorded from here on
        return train_in(args, env, device, say, stops)


def train_in(args: Namespace, env: distributed.DistEnv, device: torch.device, say: Callable[..., None],
             stops: StopRecorder) -> int:
    """Build the data, the evaluator and the trainer, resume if asked, and train. A stop signal during the
    building ends the run before its first step (exit 3), with nothing new to save: a phase with progress
    (scanning images, training the classifiers, reference statistics) is abandoned at its next update."""

    def build(phase: str, make: Callable[[], object]) -> object:
        try:
            with progress.abortable(lambda: stops.signal is not None):
                made = make()
        except progress.Interrupted:
            made = None
        if stops.signal:
            raise Preempted(f"received {stops.signal} while {phase}, before the first step: nothing new to save; "
                            f"run the same command again to start")
        return made

    dataset, classes = build("reading the data", lambda: build_dataset(data_spec(args)))
    cfg = model_config(args, resolve_num_classes(args, classes))
    loader = get_loader(dataset, device, args.batch_size, args.seed, args.num_workers, env.rank, env.world)
    wanted = args.eval_step and env.is_main
    evaluator = build("building the evaluator", lambda: build_evaluator(args, device, dataset) if wanted else None)
    distributed.init(env, device)
    try:
        trainer = Trainer(train_options(args), cfg, loader, evaluator, env, stops)
        fresh = args.pretrained_model == "latest" and not step_numbers(trainer.run["models"])
        if fresh:  # one command line for the first submission and every requeue (docs/training.md, "Preemption")
            say(f"--pretrained_model latest: no checkpoint in {trainer.run['models']} yet; starting at step 0", flush=True)
        elif args.pretrained_model:
            path = trainer.load(args.pretrained_model)
            if trainer.step > args.total_step:
                raise ValueError(f"{path} is at step {trainer.step}, beyond --total_step {args.total_step}; pass a larger "
                                 f"--total_step to train on, or --train false to sample from it")
            export = is_export(args.pretrained_model)
            how = "fine-tuning the export" if export else "resumed from"
            say(f"{how} {path} at step {trainer.step}{' (its weights; the optimizers start fresh)' if export else ''}", flush=True)
        say(f"training {args.version}: {args.dataset} ({len(dataset)} images, {cfg.num_classes} classes), "
            f"{cfg.arch} {cfg.imsize} px, G {count_params(trainer.G):,} / D {count_params(trainer.D):,} parameters, "
            f"attention G@{list(cfg.g_attn)} D@{list(cfg.d_attn)}, {device}", flush=True)
        labelled = " of one label; each label's remainder sits the update out" if cfg.num_classes else ""
        packed = f" (D judges them in packs of {cfg.d_pack}{labelled})" if cfg.d_pack > 1 else ""
        say(f"batch: {args.batch_size} per process x {args.accum} micro-batches x {env.world} processes "
            f"= {trainer.global_batch} images per D update{packed}; workers {loader.num_workers}"
            f"{' (auto)' if args.num_workers is None else ''} per process", flush=True)
        if device.type == "cpu" and args.amp == "bf16" and not cpu_bf16_units():
            say("note: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so --amp bf16 is emulated and slower "
                "than --amp off here (BENCHMARKS.md, \"bf16 on the CPU\")", flush=True)
        if args.drs:
            say(f"note: --drs {args.drs:g} rejection-samples from a checkpoint (--train false); this run's own evaluations "
                f"score G alone", flush=True)
        trainer.train()
        say(f"done: step {trainer.step}; samples in {trainer.run['samples']}, checkpoints in {trainer.run['models']}", flush=True)
    finally:
        close_loader(loader)  # every worker gone, also after an error raised in one of them
        distributed.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parameters(argv)
    try:
        if args.dry_run:
            return dry_run(args)
        if not args.train:
            return sample(args)
        return train(args)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        folder = Path(args.model_save_path) / args.version
        print(f"stopped at once by a second interrupt; the last complete checkpoint in {folder} is intact (resume with "
              f"--pretrained_model latest)", file=sys.stderr)
        return 3
    except (DatasetError, CheckpointError, EvalError, LaunchError, ValueError, FloatingPointError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 3 if getattr(e, "during_stop", False) else 2


def one_line(e: BaseException) -> str:
    """The message of an error, on one line. An error raised in a loader worker arrives wrapped in the worker's
    traceback ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."): its last line is
    the message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split("\n"))


if __name__ == "__main__":
    code = main()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the run is over: a late signal no longer changes the exit code
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)
