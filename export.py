"""Export a trained (or converted) model to share: `python export.py --version NAME [--pretrained_model STEP]
[--out DIR] [--push_to_hub USER/REPO]` writes DIR (default `exports/NAME`) laid out as the Hugging Face Hub
expects a model repository:

- `model.safetensors`: G, the EMA G when the run has one, and D, under the prefixes `G.`, `G_ema.` and `D.`
  (every state-dict entry: weights, spectral-norm u and v, batch-norm statistics). safetensors holds tensors
  only: loading it runs no code, unlike a pickle.
- `config.json`: the model config, the training flags, the step, the checkpoint it came from (name and
  SHA-256), the source of a converted model, and the evaluations of metrics.jsonl.
- `samples.png`: a fixed-noise grid of the sampling G (the EMA one when present).
- `README.md`: a model card: the grid, the metrics with their sample counts and protocol, the command that
  trained the model, the dataset, how to load it, and a licence field (`--license`, default "other").

An exported folder loads everywhere a checkpoint does: `hubconf.py` (torch.hub), `main.py --train false
--pretrained_model DIR` (samples, evaluation, attention maps), and fine-tuning with `--pretrained_model DIR`
(its weights; the optimizers start fresh). `--push_to_hub USER/REPO` uploads the folder with huggingface_hub
when the user is logged in (`hf auth login` or HF_TOKEN); then `hf://USER/REPO` loads it anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

import visualize
from checkpoints import EXPORT_CONFIG, EXPORT_WEIGHTS, CheckpointError, checkpoint_path, load_checkpoint, load_generator
from durable import write_durably, write_json, write_text
from metrics import file_sha256, metric_tag

# metrics.jsonl fields that describe an evaluation rather than score it
RECORD_FIELDS = ("step", "kimg", "train_seconds", "seconds", "samples", "ref_samples", "truncation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--version", required=True, help="the run to export: <model_save_path>/<version>/")
    p.add_argument("--model_save_path", default="./models", help="where the run folders are")
    p.add_argument("--pretrained_model", default="latest", help="the checkpoint: a step, 'latest' or a best_* checkpoint")
    p.add_argument("--out", default=None, help="the folder to write (default: exports/<version>)")
    p.add_argument("--license", default="other", help="the model card's licence field (a Hub licence id, e.g. mit, cc-by-4.0)")
    p.add_argument("--push_to_hub", default=None, metavar="USER/REPO", help="upload the folder to this Hub repository")
    return p


def metric_records(folder: Path) -> list[dict]:
    """The evaluations of metrics.jsonl (empty when the run was not evaluated); unreadable lines are skipped."""
    path = folder / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def scalar_metrics(record: dict) -> dict[str, float]:
    """name<count> -> value of a metrics.jsonl record's scalar scores (fid10k, cls_acc2k, ...)."""
    tag = metric_tag(record) if record.get("samples") else ""
    return {f"{k}{tag}": float(v) for k, v in record.items()
            if k not in RECORD_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def training_command(flags: dict) -> str:
    """The main.py command line of the run: its preset and every flag whose value differs from the default
    (or from the preset's value)."""
    from parameter import PRESETS, build_parser as main_parser, flag_text

    parser = main_parser()
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    defaults.update(PRESETS.get(flags.get("preset") or "", {}))
    option = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}  # --n_dis, not --d_iters
    words = ["python", "main.py"] + (["--preset", flags["preset"]] if flags.get("preset") else [])
    for dest, value in flags.items():
        if dest in option and dest != "preset" and value is not None and value != defaults.get(dest) and not (
                isinstance(value, (list, tuple)) and list(value) == list(defaults.get(dest) or [])):
            words += [option[dest], flag_text(value) or "none"]
    return " ".join(words)


def model_card(name: str, config: dict, records: list[dict], license_id: str) -> str:
    flags, cfg = config["flags"], config["model_config"]
    dataset = flags.get("dataset", "unknown")
    lines = ["---", f"license: {license_id}", "library_name: pytorch",
             "tags: [gan, sagan, self-attention, spectral-normalization, image-generation]",
             f"datasets: [{dataset}]", "pipeline_tag: unconditional-image-generation", "---", "",
             f"# {name}: SAGAN, {dataset}, {cfg['imsize']} px", "",
             "A Self-Attention GAN (Zhang et al., ICML 2019) trained with the sagan code base "
             f"({'class-conditional, ' + str(cfg['num_classes']) + ' classes' if cfg['num_classes'] else 'unconditional'}; "
             f"{cfg['arch']} layout, attention in G at {cfg['g_attn']} and in D at {cfg['d_attn']}), "
             f"step {config['step']}{', EMA generator' if config['ema'] else ''}.", "",
             "![samples](samples.png)", "", "## Load it", "", "```python", "import torch",
             'G = torch.hub.load("<owner>/<repo>", "generator", "hf://USER/REPO")   # the sampling G, in eval mode',
             "images = G.generate(16, seed=0)                                        # (16, 3, H, W) in [0, 1]",
             "```", "", "With a checkout of the code: `python main.py --train false --pretrained_model hf://USER/REPO` "
             "writes samples, attention maps and, with `--eval_samples N`, an evaluation.", "", "## Metrics", ""]
    if records:
        last = records[-1]
        lines += [f"From `metrics.jsonl`, measured during training (the suffix is the number of generated samples; "
                  f"{last.get('ref_samples', 'all')} real reference images). The last evaluation, step {last['step']}:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4f} |" for k, v in scalar_metrics(last).items()]
        if len(records) > 1:
            lines += ["", f"{len(records)} evaluations in all, at steps {', '.join(str(r['step']) for r in records)} "
                          f"(`config.json` holds every record)."]
        protocol = last.get("protocol") or ("Inception (TF 2015-12-05 weights), docs/evaluation.md" if "fid" in last else
                                            "the two-classifier metric for labelled datasets, docs/evaluation.md")
        lines += ["", f"Protocol: {protocol}."]
    else:
        lines += ["This run was not evaluated during training (no `--eval_step`)."]
    source = config.get("source")
    lines += ["", "## Training", "", "```bash", training_command(flags), "```", "",
              f"Dataset: `{dataset}`" + (f" ({flags.get('lsun_category')})" if dataset == "lsun" else "") + "."]
    if source:
        lines += ["", f"Converted from a {source.get('format')} checkpoint: "
                      + ", ".join(f"`{Path(f['path']).name}` (SHA-256 {f['sha256'][:16]}...)" for f in source.get("files", {}).values()) + "."]
    lines += ["", "## Licence", "", f"`{license_id}`: the licence of these weights as their author chose it; the "
                  "dataset's own terms apply to what it was trained on.", ""]
    return "\n".join(lines)


def export(folder: Path, which: str, out: Path, license_id: str = "other") -> Path:
    """Write the exported folder `out` for checkpoint `which` of the run folder `folder`."""
    path = checkpoint_path(folder, which)
    ckpt = load_checkpoint(path)
    tensors = {f"{part}.{k}": v.detach().cpu().contiguous().clone()
               for part in ("G", "G_ema", "D") if ckpt.get(part) for k, v in ckpt[part].items()}
    records = metric_records(folder)
    config = {"format": "sagan-export", "format_version": 1, "model_config": ckpt["model_config"], "flags": ckpt.get("args", {}),
              "step": int(ckpt["step"]), "ema": ckpt.get("G_ema") is not None, "source": ckpt.get("source"),
              "checkpoint": {"file": path.name, "sha256": file_sha256(path)}, "metrics": records}
    out.mkdir(parents=True, exist_ok=True)
    write_durably(out / EXPORT_WEIGHTS, lambda f: f.write(safetensors_bytes(tensors)))
    write_json(out / EXPORT_CONFIG, config)
    loaded = load_generator(out)  # the export loads as every user of it will load it
    z, y = visualize.fixed_noise(loaded.config, int(config["flags"].get("seed", 0)) + 1, torch.device("cpu"))
    visualize.write_sample_grid(loaded.G, z, y, out / "samples.png")
    write_text(out / "README.md", model_card(folder.name, config, records, license_id))
    return out


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors serialisation of `tensors` (metadata: the format), for a durable write."""
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt", "sagan": "export-1"})


def push(out: Path, repo: str) -> str:
    """Upload `out` to the Hub repository `repo` (created if missing); needs a login."""
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError as e:
        raise CheckpointError("--push_to_hub needs huggingface_hub: pip install huggingface_hub") from e
    if not get_token():
        raise CheckpointError("--push_to_hub: not logged in to the Hugging Face Hub; run `hf auth login` (or set HF_TOKEN), "
                              "then export again")
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo, commit_message=f"sagan export of {out.name}")
    return f"https://huggingface.co/{repo}"


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    folder = Path(a.model_save_path) / a.version
    out = Path(a.out) if a.out else Path("exports") / a.version
    try:
        export(folder, a.pretrained_model, out, a.license)
        print(f"exported {folder} ({a.pretrained_model}) -> {out}: {EXPORT_WEIGHTS}, {EXPORT_CONFIG}, samples.png, README.md")
        if a.push_to_hub:
            print(f"uploaded to {push(out, a.push_to_hub)}; load it with hf://{a.push_to_hub}")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
