"""Ablations, as lists of flag sets over the normal training run (`main.main`, the same code path).

    python ablation.py --dataset fashion_mnist     # the paper's Table 1 / Figure 3 questions on real data
    python ablation.py                 # the `shapes` smoke test: 6 variants x 1800 steps of the demo model
    python ablation.py --steps 300     # a quicker, noisier pass

Fashion-MNIST (`--dataset fashion_mnist`): every variant is the `fmnist_32` preset with the same
number of steps (`--steps`) and `--seeds` seeds, changed only by its flags (`FMNIST_VARIANTS`): no
attention; attention in G and D at 8x8, 16x16 (the preset) and 32x32 (G only: D's first block
already downsamples 32 to 16, so D keeps 16); the paper's "residual" rows, a parameter-matched
residual block at the same places (`--attn_block residual`, `sagan_models.ResidualControl`); G
without spectral norm (Figure 3); and equal learning rates instead of TTUR, both at G's rate, or both
at D's rate with n_dis 5 as in SNGAN. Runs go one after another and resume: a finished run is kept,
an interrupted one continues from its `latest` checkpoint (`--pretrained_model latest`), so the
command can be stopped (exit 3) and started again, e.g. in the background:

    nohup python ablation.py --dataset fashion_mnist > ablation_fmnist.log 2>&1 &

Each run evaluates with the offline classifier metric every `--eval_every` steps (`metrics.jsonl`).
The report (`<out>/table.md`, `results.json`, `cls_acc.png`, `grids/`, `grids.png`) gives, per
variant, the mean and standard deviation over seeds of class accuracy, GAN-train accuracy and the
classifier-feature FD at the end and at each seed's best step (by class accuracy), the accuracy curve
(mean line, min-max band over seeds), one final sample grid (first seed; all of them side by side in
`grids.png`), and the differences from the SAGAN default larger than the two variants' spreads. `--list` prints the variants and their parameter
counts; extra flags (e.g. `--data_dir`, `--g_conv_dim`) go to every run.

`shapes` (the default):
Every variant is the `demo` preset (class-conditional ResNet SAGAN, 32 px, `shapes`) with the same
seed and number of steps; only attention placement and span change. The score needs no download: the
offline classifier metric (`classifier.py`) trains a small CNN on `shapes` itself (held-out accuracy
printed) and applies it to 2,000 class-conditional samples of each generator (fixed latents, uniform
labels, G in eval mode). "Class accuracy" (`cls_acc`) is the fraction of samples that the classifier
assigns to the class G was asked for; GAN-train accuracy and the classifier-feature FD are recorded too.
This is a smoke test of the machinery (attention, span masks, conditioning), not a paper result:
`shapes` is a toy dataset and one seed per variant says nothing about significance.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

import visualize
from classifier import ClassifierEvaluator
from data_loader import FMNIST_CLASSES, SHAPE_CLASSES, SHAPES_SEED, Shapes
from main import main as run_main
from parameter import get_parameters, model_config
from sagan_models import Discriminator, Generator, count_params
from checkpoints import load_generator
from trainer import attention_gammas

VARIANTS: list[tuple[str, str]] = [
    ("no attention", "--g_attn none --d_attn none"),
    ("G@8 D@8", "--g_attn 8 --d_attn 8"),
    ("G@16 D@16 (SAGAN default)", "--g_attn 16 --d_attn 16"),
    ("G@32 D@16", "--g_attn 32 --d_attn 16"),
    ("G@16 D@16, span 1", "--g_attn 16 --d_attn 16 --span 1"),
    ("G@16 D@16, span 2", "--g_attn 16 --d_attn 16 --span 2"),
]


# Fashion-MNIST: (name, flags on top of --preset fmnist_32 and FMNIST_BASE). The second is the base itself (the SAGAN
# default). FMNIST_BASE keeps the settings the ablation was measured with (docs/ablations.md):
# the first version of fmnist_32 (G width 16, one D step, no class head in D, no mode-seeking term, untruncated z);
# its EMA and halving start after the ablation's 600 steps.
FMNIST_BASE = ["--g_conv_dim", "16", "--n_dis", "1", "--lr_decay_step", "2500", "--ema_start", "2500", "--d_ac", "false",
               "--ms_weight", "0", "--truncation", "0"]
FMNIST_VARIANTS: list[tuple[str, str]] = [
    ("no attention", "--g_attn none --d_attn none"),
    ("attention 16 (SAGAN)", "--g_attn 16 --d_attn 16"),
    ("attention 8", "--g_attn 8 --d_attn 8"),
    ("attention 32 (G; D at 16)", "--g_attn 32 --d_attn 16"),
    ("residual 8", "--g_attn 8 --d_attn 8 --attn_block residual"),
    ("residual 16", "--g_attn 16 --d_attn 16 --attn_block residual"),
    ("residual 32 (G; D at 16)", "--g_attn 32 --d_attn 16 --attn_block residual"),
    ("no SN on G", "--g_attn 16 --d_attn 16 --g_sn false"),
    ("equal rates 4e-4", "--g_attn 16 --d_attn 16 --d_lr 4e-4"),
    ("equal rates 1.6e-3, n_dis 5", "--g_attn 16 --d_attn 16 --g_lr 1.6e-3 --n_dis 5"),
]
FMNIST_BASELINE = "attention 16 (SAGAN)"
# The plot's panels: the paper's questions, each drawn against the SAGAN default on one shared y axis.
FMNIST_PANELS: list[tuple[str, list[str]]] = [
    ("where attention goes (Table 1)", ["no attention", "attention 8", FMNIST_BASELINE, "attention 32 (G; D at 16)"]),
    ("a residual block of the same size instead (Table 1)",
     ["residual 8", "residual 16", "residual 32 (G; D at 16)", FMNIST_BASELINE]),
    ("spectral norm on G and TTUR (Figure 3)",
     [FMNIST_BASELINE, "no SN on G", "equal rates 4e-4", "equal rates 1.6e-3, n_dis 5"]),
]
FMNIST_STEPS = 600  # 10 variants x 3 seeds: 2.0 h measured on 2 CPU cores (docs/ablations.md)
METRICS = (("cls_acc", "class accuracy", "{:.1%}"), ("ind_acc", "independent class accuracy", "{:.1%}"),
           ("gan_train_acc", "GAN-train accuracy", "{:.1%}"), ("fid_cls", "classifier FD", "{:.1f}"),
           ("ind_fd", "independent FD", "{:.1f}"), ("cls_recall", "recall (tuning)", "{:.1%}"),
           ("ind_recall", "independent recall", "{:.1%}"))
# The best step is chosen by the tuning classifier's class accuracy, so it is reported with figures that
# played no part in the choice (a choice made with one metric is reported with another).
BEST_METRICS = tuple(m for m in METRICS if m[0] != "cls_acc")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def variant_counts(flags: str, extra: Sequence[str] = ()) -> tuple[int, int]:
    """(G, D) parameter counts of a Fashion-MNIST variant (10 classes), from its resolved configuration."""
    args = get_parameters(["--preset", "fmnist_32", *FMNIST_BASE, *extra, *shlex.split(flags)])
    cfg = model_config(args, len(FMNIST_CLASSES))
    return count_params(Generator(cfg)), count_params(Discriminator(cfg))


def pick(spec: str | None) -> list[tuple[str, str]]:
    """--only '0,4' (indices into FMNIST_VARIANTS) or names; all variants when empty."""
    if not spec:
        return list(FMNIST_VARIANTS)
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        match = [v for i, v in enumerate(FMNIST_VARIANTS) if part == str(i) or part == v[0] or part == slug(v[0])]
        if not match:
            raise SystemExit(f"ablation.py: error: unknown variant {part!r}; --list shows them")
        out += match
    return out


def fmnist_run(name: str, flags: str, seed: int, a: argparse.Namespace, extra: Sequence[str]) -> int:
    """Train (or resume, or skip when finished) one variant and seed; main.py's exit code."""
    out = Path(a.out)
    version = f"{slug(name)}_s{seed}"
    if (out / "models" / version / f"{a.steps}.pt").is_file():
        return 0
    argv = ["--preset", "fmnist_32", *FMNIST_BASE, "--version", version, "--total_step", str(a.steps), "--seed", str(seed),
            "--eval_step", str(a.eval_every), "--eval_samples", str(a.eval_samples), "--model_save_step", str(a.eval_every),
            "--sample_step", str(a.steps), "--log_step", str(max(1, a.steps // 4)), "--pretrained_model", "latest",
            "--keep_last", "1", "--eval_cache_dir", str(out / "cache"), "--model_save_path", str(out / "models"),
            "--sample_path", str(out / "samples"), "--log_path", str(out / "logs"), "--attn_path", str(out / "attn"),
            *extra, *shlex.split(flags)]
    print(f"== {name}, seed {seed}: python main.py {' '.join(argv)}", flush=True)
    return run_main(argv)


def _records(out: Path, name: str, seed: int, steps: int) -> list[dict]:
    path = out / "models" / f"{slug(name)}_s{seed}" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["step"] <= steps]


def _mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, standard deviation) over seeds; None when there is none, or a record lacks the figure."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def accuracy_curve(runs: list[list[dict]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) of class accuracy in % over the seeds' metrics records, at the steps that every
    seed evaluated (a run stopped during an evaluation before the trainer caught up on resume lacks that step)."""
    steps = sorted(set.intersection(*({r["step"] for r in run} for run in runs)))
    acc = [[r["cls_acc"] * 100 for r in run if r["step"] in steps] for run in runs]  # (seeds, steps)
    return steps, [statistics.fmean(c) for c in zip(*acc)], [min(c) for c in zip(*acc)], [max(c) for c in zip(*acc)]


def accuracy_plot(curves: dict[str, tuple[list[float], ...]], steps: int) -> Image.Image:
    """Class accuracy against step (mean line, min-max band over seeds): one panel per FMNIST_PANELS entry
    that has a finished variant, then one for any variant no panel names; one y axis and one colour per
    variant throughout."""
    names = [n for n, _ in FMNIST_VARIANTS] + [n for n in curves if n not in dict(FMNIST_VARIANTS)]
    colours = {n: visualize.PALETTE[k % len(visualize.PALETTE)] for k, n in enumerate(names)}
    ys = [y for c in curves.values() for part in c[1:] for y in part]
    named = {n for _, members in FMNIST_PANELS for n in members}
    panels = FMNIST_PANELS + [("other variants", [n for n in curves if n not in named])]
    images = []
    for title, members in panels:
        series = {n: curves[n] for n in members if n in curves}
        if series:
            images.append(visualize.line_plot(
                series, f"({chr(ord('a') + len(images))}) {title}", "class accuracy (%)", size=(900, 420),
                colours=colours, y_range=(min(ys), max(ys))))
    return visualize.stack(images, f"Fashion-MNIST, fmnist_32 settings, {steps} steps: class accuracy "
                                   "(mean over seeds, min-max band)")


def fmnist_report(variants: list[tuple[str, str]], a: argparse.Namespace, extra: Sequence[str]) -> str:
    """Table (markdown), results.json, the accuracy plot and one grid per variant, from the runs' metrics.jsonl."""
    out, seeds = Path(a.out), list(range(a.seed, a.seed + a.seeds))
    results, curves, sheet = [], {}, []
    for name, flags in variants:
        runs = {s: _records(out, name, s, a.steps) for s in seeds}
        done = [s for s, r in runs.items() if r and r[-1]["step"] == a.steps]
        g, d = variant_counts(flags, extra)
        row = {"variant": name, "flags": flags, "G_params": g, "D_params": d, "seeds_done": done}
        best = [max(runs[s], key=lambda r: r["cls_acc"]) for s in done]  # each seed's best record
        for key, _, _ in METRICS:
            row[f"{key}_end"] = _mean_std([runs[s][-1].get(key) for s in done])
            row[f"{key}_best"] = _mean_std([b.get(key) for b in best])
        row["best_steps"] = [b["step"] for b in best]
        row["minutes"] = [round(runs[s][-1]["train_seconds"] / 60, 1) for s in done]
        row["eval_minutes"] = [round(sum(r["seconds"] for r in runs[s]) / 60, 1) for s in done]
        results.append(row)
        if done:
            curves[name] = accuracy_curve([runs[s] for s in done])
            grid = out / "samples" / f"{slug(name)}_s{done[0]}" / f"{a.steps}_fake.png"
            if grid.is_file():
                (out / "grids").mkdir(parents=True, exist_ok=True)
                shutil.copy(grid, out / "grids" / f"{slug(name)}.png")
                with Image.open(grid) as img:
                    sheet.append((name, img.copy()))
    if curves:
        accuracy_plot(curves, a.steps).save(out / "cls_acc.png")
    if sheet:
        visualize.tile(sheet, columns=5, title=f"Step {a.steps}, first finished seed: one row per class (the class G was asked for)").save(
            out / "grids.png")
    (out / "results.json").write_text(json.dumps({"steps": a.steps, "seeds": seeds, "eval_samples": a.eval_samples,
                                                  "rows": results}, indent=2))
    tag = f"{a.eval_samples // 1000}k" if a.eval_samples % 1000 == 0 else str(a.eval_samples)

    def cell(v: tuple[float, float] | None, fmt: str) -> str:
        if v is None:
            return "-"
        scale = 100 if "%" in fmt else 1
        return f"{fmt.format(v[0])} ± {v[1] * scale:.1f}" + ("" if scale == 1 else " pt")

    head = " | ".join(f"{label} (end)" for _, label, _ in METRICS) + " | " + " | ".join(f"{label} (best step)" for _, label, _ in BEST_METRICS)
    lines = [f"{a.steps} steps, seeds {seeds}, {tag} samples per evaluation; mean ± standard deviation over seeds; "
             "the best step is each seed's highest class accuracy (tuning classifier), reported with the other figures", "",
             f"| variant | flags | G / D parameters | {head} | seeds | training min |",
             "|---|---|---|" + "---|" * (len(METRICS) + len(BEST_METRICS)) + "---|---|"]
    for r in results:
        cells = " | ".join(cell(r[f"{k}_end"], f) for k, _, f in METRICS) + " | " + " | ".join(cell(r[f"{k}_best"], f) for k, _, f in BEST_METRICS)
        mins = f"{statistics.fmean(r['minutes']):.1f}" if r["minutes"] else "-"
        lines.append(f"| {r['variant']} | `{r['flags']}` | {r['G_params']:,} / {r['D_params']:,} | {cells} | {len(r['seeds_done'])} | {mins} |")
    train, evals = sum(sum(r["minutes"]) for r in results), sum(sum(r["eval_minutes"]) for r in results)
    lines += ["", f"Compute: {sum(len(r['seeds_done']) for r in results)} finished runs, {train:.0f} min of training + "
              f"{evals:.0f} min of evaluation = {(train + evals) / 60:.1f} h (startup and checkpoint writes not counted)"]
    base = next((r for r in results if r["variant"] == FMNIST_BASELINE and len(r["seeds_done"]) > 1), None)
    if base is not None:
        lines += ["", f"Differences from {FMNIST_BASELINE} at the end larger than the sum of the two standard deviations:"]
        found = False
        for r in results:
            if r is base or len(r["seeds_done"]) < 2:  # one seed has no spread to compare
                continue
            for k, label, f in METRICS:
                if r[f"{k}_end"] is None or base[f"{k}_end"] is None:
                    continue
                (m1, s1), (m0, s0) = r[f"{k}_end"], base[f"{k}_end"]
                if abs(m1 - m0) > s1 + s0:
                    found = True
                    lines.append(f"- {r['variant']}: {label} {f.format(m1)} vs {f.format(m0)}")
        if not found:
            lines.append("- none")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table


def fmnist_main(a: argparse.Namespace, extra: list[str]) -> int:
    variants = pick(a.only)
    if a.list:
        print("| variant | flags | G parameters | D parameters |\n|---|---|---|---|")
        for name, flags in variants:
            g, d = variant_counts(flags, extra)
            print(f"| {name} | `{flags}` | {g:,} | {d:,} |")
        return 0
    t0 = time.perf_counter()
    if not a.report_only:
        for name, flags in variants:
            for seed in range(a.seed, a.seed + a.seeds):
                code = fmnist_run(name, flags, seed, a, extra)
                if code:
                    print(f"ablation stopped at {name}, seed {seed} (exit {code}); run the same command again to resume", flush=True)
                    return code
    print(fmnist_report(variants, a, extra))
    print(f"wrote {Path(a.out) / 'table.md'}, results.json, cls_acc.png, grids/ and grids.png ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


def shapes_evaluator(out: Path) -> ClassifierEvaluator:
    """The offline classifier metric (classifier.py) for `shapes` at 32 px: trained on the 10,000 images,
    held-out accuracy on 2,000 others; cached in `out`."""
    return ClassifierEvaluator(Shapes(32), Shapes(32, size=2000, seed=SHAPES_SEED + 1), "shapes", 32, len(SHAPE_CLASSES),
                               torch.device("cpu"), out, n_ref=0)


def run_variant(name: str, flags: str, steps: int, out: Path, seed: int) -> dict:
    version = "ablation_" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
    argv = ["--preset", "demo", "--version", version, "--total_step", str(steps), "--seed", str(seed),
            "--sample_step", str(steps), "--model_save_step", str(steps), "--log_step", "100",
            "--model_save_path", str(out / "models"), "--sample_path", str(out / "samples"),
            "--log_path", str(out / "logs"), "--attn_path", str(out / "attn"), *shlex.split(flags)]
    t0 = time.perf_counter()
    ckpt = out / "models" / version / f"{steps}.pt"
    if not ckpt.is_file():
        assert run_main(argv) == 0, f"training {name} failed"
    minutes = (time.perf_counter() - t0) / 60
    G = load_generator(out / "models" / version, str(steps)).G
    return {"variant": name, "flags": flags, "version": version, "minutes": round(minutes, 1), "gammas": attention_gammas(G), "G": G}


def build_parser() -> argparse.ArgumentParser:
    """ablation.py's own flags; the rest are main.py's, added to every run (fashion_mnist)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=str, default="shapes", choices=["shapes", "fashion_mnist"])
    p.add_argument("--steps", type=int, default=None, help="steps per run (shapes: 1800; fashion_mnist: FMNIST_STEPS)")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=3, help="fashion_mnist: seeds per variant")
    p.add_argument("--eval_every", type=int, default=None, help="fashion_mnist: steps between evaluations (default steps/4)")
    p.add_argument("--eval_samples", type=int, default=2000, help="fashion_mnist: samples per evaluation")
    p.add_argument("--only", type=str, default=None, help="fashion_mnist: variants to run, by index or name (comma-separated)")
    p.add_argument("--list", action="store_true", help="fashion_mnist: print the variants and their parameter counts")
    p.add_argument("--report_only", action="store_true", help="fashion_mnist: write the report from the runs so far")
    p.add_argument("--out", type=str, default=None, help="output folder (default ablation, or ablation_fmnist)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    a, extra = p.parse_known_args(argv)
    if a.dataset == "fashion_mnist":
        a.steps = a.steps or FMNIST_STEPS
        a.eval_every = a.eval_every or max(1, a.steps // 4)
        a.out = a.out or "ablation_fmnist"
        return fmnist_main(a, extra)
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    a.steps = a.steps or 1800
    out = Path(a.out or "ablation")
    evaluator = shapes_evaluator(out)
    held_out = evaluator.test_acc
    print(f"shape classifier: {held_out:.1%} on 2,000 held-out shapes images", flush=True)
    rows = []
    for name, flags in VARIANTS:
        r = run_variant(name, flags, a.steps, out, a.seed)
        m = evaluator(r.pop("G"), 2000)["metrics"]
        acc, per_class = m["cls_acc"], m["cls_acc_per_class"]
        r.update({"class_accuracy": acc, "per_class": per_class, "gan_train_acc": m["gan_train_acc"], "fid_cls": m["fid_cls"]})
        rows.append(r)
        print(f"{name}: class accuracy {acc:.1%} ({r['minutes']} min)", flush=True)
    (out / "results.json").write_text(json.dumps({"steps": a.steps, "seed": a.seed, "classifier_held_out": held_out,
                                                  "rows": rows}, indent=2))
    print(f"\n{a.steps} steps, seed {a.seed}; classifier held-out accuracy {held_out:.1%}\n")
    print("| variant | flags | class accuracy | " + " | ".join(SHAPE_CLASSES) + " | final gammas | minutes |")
    print("|---|---|---|" + "---|" * len(SHAPE_CLASSES) + "---|---|")
    for r in rows:
        gam = ", ".join(f"{k}={v:.3f}" for k, v in r["gammas"].items()) or "-"
        per = " | ".join(f"{v:.0%}" for v in r["per_class"])
        print(f"| {r['variant']} | `{r['flags']}` | {r['class_accuracy']:.1%} | {per} | {gam} | {r['minutes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
