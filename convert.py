"""Convert a reference's checkpoint (StudioGAN, MMGeneration 0.x / mmagic 1.x, heykeetae) into ours.

    python convert.py SOURCE... --version NAME [--from studiogan|mmgen|heykeetae] [--preset P] [model flags]

writes `models/NAME/<step>.pt`, `latest` and `training_options.json`, a regular checkpoint of this
code: `python main.py --train false --version NAME` samples, evaluates and looks inside it, and
`python main.py --pretrained_model latest --version NAME` with the same flags fine-tunes it. The
source files, their SHA-256 and the format are recorded in the checkpoint (`source`) and in
`training_options.json`.

SOURCE is one file (MMGeneration/mmagic), the G, D (and G_ema) files (StudioGAN, heykeetae), a
folder holding them, the name of what `bash download.sh mmgen_<name>` or `studiogan_<name>` fetched, or
a file or StudioGAN run folder on the Hugging Face Hub, `hf://Mingguksky/PyTorch-StudioGAN/<path>`
(fetched by huggingface_hub). The format is detected from each file's structure; `--from` insists on one.
The model comes from the flags (a preset and overrides); every tensor goes through the key tables in
`legacy.py`, and a file that does not fit the model is refused with one line that lists the
missing, unexpected and mis-shaped keys. Adam states are carried over when the source has them and
every parameter maps to exactly one of the source's; otherwise they start fresh (and this says so).

The step of the checkpoint counts generator updates, as our --total_step does: StudioGAN's and
heykeetae's step as stored, MMGeneration's iteration (one D step each) divided by --n_dis.

Exit codes: 0 written; 2 an error explained on one line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from argparse import Namespace
from pathlib import Path
from typing import Sequence

import checkpoints
import legacy
from checkpoints import CheckpointError
from durable import write_json
from legacy import Foreign
from metrics import file_sha256
from parameter import explicit_flags, get_parameters, model_config, train_options


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert a StudioGAN, MMGeneration/mmagic or heykeetae checkpoint into this code's format. "
                    "Every other flag is main.py's (--preset, --version, model flags).", add_help=True)
    p.add_argument("--from", dest="fmt", choices=legacy.FORMATS, default=None,
                   help="the source format (default: detected from the files' structure)")
    p.add_argument("--channel_order", choices=("auto", "bgr", "rgb"), default="auto",
                   help="MMGeneration/mmagic: the order the source's G outputs and D reads (auto: BGR unless a "
                        "convert-studio-rgb file); the converted model is always RGB")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], Namespace, list[str]]:
    """(sources, convert's own flags, main.py's flags): sources are the leading non-flag words."""
    argv = list(argv)
    n = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    own, rest = convert_parser().parse_known_args(argv[n:])
    return argv[:n], own, rest


# StudioGAN's files on the Hugging Face Hub: the best G, D (and G_ema) of a run folder
STUDIOGAN_FILE = re.compile(r"model=(G|D|G_ema)-best-weights-step=\d+\.pth$")


def hub_files(ref: str) -> list[Path]:
    """hf://USER/REPO/PATH[@REVISION] -> local copies of the file PATH, or of the best G, D and G_ema files of
    the StudioGAN run folder PATH (huggingface_hub's cache; the network is needed once)."""

    def names(repo: str, path: str, revision: str | None) -> list[str]:
        if path.endswith((".pth", ".pt")):
            return [path]
        from huggingface_hub import HfApi

        found = sorted(e.path for e in HfApi().list_repo_tree(repo, path_in_repo=path, revision=revision)
                       if STUDIOGAN_FILE.search(e.path))
        if not found:
            raise CheckpointError(f"{ref} holds no model=G/D/G_ema-best-weights-step=N.pth files; name the files")
        return found

    return checkpoints.from_hub(ref, names, "name a file or a run folder in the repository, hf://USER/REPO/PATH", min_parts=3)


def resolve_sources(sources: Sequence[str], image_path: str) -> list[Path]:
    """Sources as local files or folders: a download.sh name (mmgen_<name>, studiogan_<name>) is its folder
    under <data>/checkpoints/; an hf:// name is fetched from the Hugging Face Hub."""
    out: list[Path] = []
    for s in sources:
        if s.startswith("hf://"):
            out += hub_files(s)
            continue
        path = Path(s)
        if not path.exists() and re.fullmatch(r"(mmgen|studiogan)_\w+", s):
            path = Path(os.environ.get("SAGAN_DATA_DIR", image_path)) / "checkpoints" / s
            if not path.is_dir():
                raise CheckpointError(f"{s} is not downloaded ({path} does not exist); run: bash download.sh {s}")
        out.append(path)
    return out


def num_classes_of(src: Foreign) -> int:
    """Classes of the source's D (projection rows); 0 for an unconditional model."""
    for key in ("embedding.weight_orig", "embedding.weight", "proj_y.weight_orig", "proj_y.weight"):
        if key in src.D:
            return int(src.D[key].shape[0])
    return 0


def relu_inplace(config: str, name: str) -> bool | None:
    """Whether an MMGeneration file's D uses in-place ReLU: its config text decides when it names the
    ReLU's inplace; else the file name (wReLUinplace / woReLUinplace); None when neither says."""
    said = re.findall(r"inplace\s*=\s*(True|False)", config or "")
    if said:
        return "True" in said
    if "woReLUinplace" in name:
        return False
    if "wReLUinplace" in name:
        return True
    return None


def flag_problems(src: Foreign, args: Namespace) -> list[str]:
    """Settings of the reference that change the model's function and that the flags contradict."""
    out = []
    if src.format == "studiogan":
        if not args.d_relu_shortcut:
            out.append("StudioGAN's D applies an in-place ReLU that also rectifies its shortcut input: add --d_relu_shortcut true")
        if args.bn_eps != 1e-4:
            out.append(f"StudioGAN's batch norm uses eps 1e-4, the flags give {args.bn_eps:g}: add --bn_eps 1e-4")
    if src.format == "mmgen":
        text = src.config
        inplace = relu_inplace(text, Path(src.files["G+D"]).name)
        if inplace is True and not args.d_relu_shortcut:
            out.append("the file's D uses in-place ReLU (the 'wReLUinplace' rows): add --d_relu_shortcut true")
        if inplace is False and args.d_relu_shortcut:
            out.append("the file's D uses ReLU without in-place (the 'woReLUinplace' rows), so its shortcut input is not "
                       "rectified: pass --d_relu_shortcut false")
        m = re.search(r"norm_eps\s*=\s*([0-9.eE+-]+)", text)
        want = float(m.group(1)) if m else 1e-4
        if text and args.bn_eps != want:
            out.append(f"the file's generator uses batch-norm eps {want:g}, the flags give {args.bn_eps:g}: add --bn_eps {want:g}")
    if src.format == "heykeetae" and (args.sn_layers != "port" or args.convt_sn_dim != 0):
        out.append("heykeetae's spectral norm covers l1-l4 only and reshapes ConvTranspose weights as (in, out*k*k): "
                   "add --sn_layers port --convt_sn_dim 0 (the sagan_celeb_64 preset sets both)")
    if args.d_pack > 1:
        out.append(f"{src.format}'s D judges one image at a time, and --d_pack {args.d_pack} builds a D for packs: drop --d_pack")
    return out


def convert(argv: Sequence[str]) -> Path:
    from trainer import Trainer

    sources, own, rest = split_argv(argv)
    if not sources:
        raise CheckpointError("name the source file(s) first: python convert.py SOURCE... --version NAME [--preset P] [flags]")
    given = explicit_flags(rest)
    if "version" not in given:
        raise CheckpointError("pass --version NAME: the converted checkpoint goes to <model_save_path>/NAME/")
    args = get_parameters(rest)
    src = legacy.read_foreign(resolve_sources(sources, args.image_path), own.fmt)
    if own.channel_order != "auto":
        if src.format != "mmgen":
            raise CheckpointError("--channel_order applies to MMGeneration/mmagic files only (the others are RGB)")
        src.bgr = own.channel_order == "bgr"
    classes = num_classes_of(src)
    if args.num_classes >= 0 and args.num_classes != classes:
        raise CheckpointError(f"the source's D has {classes} classes, the flags give --num_classes {args.num_classes}")
    problems = flag_problems(src, args)
    if problems:
        raise CheckpointError("; ".join(problems))
    notes = list(src.notes)
    if src.format == "mmgen":
        notes.append("channel order: the source is BGR (MMGeneration trained on BGR images); converted to RGB" if src.bgr else
                     "channel order: the source is RGB (a StudioGAN conversion, or --channel_order rgb); kept")
    if src.G_ema is not None:
        if not args.ema:
            args.ema = True
            notes.append("the source has an EMA generator: --ema true is recorded, so samples and metrics use it")
        if src.ema_decay is not None and "ema_decay" not in given:
            args.ema_decay = src.ema_decay
        if src.ema_start_iter is not None and "ema_start" not in given:
            args.ema_start = src.ema_start_iter // (args.n_dis if src.format == "mmgen" else 1)
    folder = Path(args.model_save_path) / args.version
    with checkpoints.RunLock(folder):  # a training run on this version is refused, and vice versa
        if checkpoints.step_numbers(folder) or (folder / "latest").exists():
            raise CheckpointError(f"{folder} already holds checkpoints; pick another --version (nothing was overwritten)")
        cfg = model_config(args, classes)
        args.device = "cpu"
        trainer = Trainer(train_options(args), cfg)
        g_table, d_table = legacy.tables_for(src, trainer.G, trainer.D)
        what = ", ".join(str(p) for p in src.files.values())
        g = legacy.apply_table(g_table, src.G, trainer.G.state_dict(), f"{what} (G)")
        d = legacy.apply_table(d_table, src.D, trainer.D.state_dict(), f"{what} (D)")
        ema = legacy.apply_table(g_table, src.G_ema, trainer.G.state_dict(), f"{what} (G_ema)") if src.G_ema else None
        flip_g, flip_d = legacy.rgb_flips(trainer.G, trainer.D) if src.bgr else (None, None)
        trainer.G.load_state_dict(flip_g(g.state) if flip_g else g.state)
        trainer.D.load_state_dict(flip_d(d.state) if flip_d else d.state)
        if trainer.ema is not None:
            trainer.ema.model.load_state_dict((flip_g(ema.state) if flip_g else ema.state) if ema else trainer.G.state_dict())
            if ema is None:
                notes.append("the source has no EMA generator: the EMA starts as a copy of G")
        carried = []
        for name, opt, their, table, theirs_sd, model, flip in (
                ("G", trainer.opt_g, src.opt_g, g_table, src.G, trainer.G, flip_g),
                ("D", trainer.opt_d, src.opt_d, d_table, src.D, trainer.D, flip_d)):
            state = legacy.map_optimizer(their, table, theirs_sd, model, opt.state_dict(), flip) if their else None
            if state is not None:
                opt.load_state_dict(state)
                carried.append(name)
        if carried:
            notes.append(f"Adam states of {' and '.join(carried)} carried over (learning rates, betas and eps from the flags)")
        fresh = [n for n in ("G", "D") if n not in carried]
        if fresh:
            why = "the source has none" if src.opt_g is None and src.opt_d is None else "the source's do not map exactly"
            notes.append(f"Adam states of {' and '.join(fresh)} start fresh ({why})")
        iteration = src.iteration or 0
        if iteration < 0:
            raise CheckpointError(f"the source says its step is {iteration}; a step cannot be negative, so the file is damaged "
                                  f"or edited: use another one")
        trainer.step = iteration // args.n_dis if src.format == "mmgen" else iteration
        trainer.source = {
            "format": src.format,
            "files": {role: {"path": str(p.resolve()), "sha256": file_sha256(p)} for role, p in src.files.items()},
            "iteration": src.iteration, "channel_order": "bgr" if src.bgr else "rgb", "notes": notes,
        }
        path = trainer.save()
    options = {"args": vars(args), "model_config": cfg.to_dict(), "source": trainer.source, "step": trainer.step}
    write_json(trainer.run["models"] / "training_options.json", options)
    for n in notes:
        print(f"note: {n}")
    loaded = checkpoints.load_generator(folder)  # the file loads as every sampling command will load it
    print(f"converted {src.format} ({what}) -> {path} (step {loaded.step}; sampling "
          f"{'the EMA generator' if loaded.ema else 'G'}); latest -> {path.name}")
    flags = " ".join(rest)
    print(f"sample and look inside: python main.py --train false {flags}")
    keep_ema = ""
    if trainer.ema is not None and "ema" not in given:  # resuming without --ema is refused: it would drop the EMA G
        keep_ema = f" --ema true --ema_decay {trainer.ema.decay:g} --ema_start 0"
    print(f"fine-tune: python main.py {flags}{keep_ema} --pretrained_model latest --total_step {trainer.step + 1000}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        convert(argv)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
