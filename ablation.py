"""The `shapes` ablation: where attention goes, and the non-local span, on a CPU in under an hour.

    python ablation.py                 # 6 variants x 1800 steps of the demo model, then the table
    python ablation.py --steps 300     # a quicker, noisier pass

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
import time
from pathlib import Path
from typing import Sequence

import torch

from classifier import ClassifierEvaluator
from data_loader import SHAPE_CLASSES, SHAPES_SEED, Shapes
from main import main as run_main
from parameter import get_parameters
from trainer import Trainer, attention_gammas, model_config

VARIANTS: list[tuple[str, str]] = [
    ("no attention", "--g_attn none --d_attn none"),
    ("G@8 D@8", "--g_attn 8 --d_attn 8"),
    ("G@16 D@16 (SAGAN default)", "--g_attn 16 --d_attn 16"),
    ("G@32 D@16", "--g_attn 32 --d_attn 16"),
    ("G@16 D@16, span 1", "--g_attn 16 --d_attn 16 --span 1"),
    ("G@16 D@16, span 2", "--g_attn 16 --d_attn 16 --span 2"),
]


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
    args = get_parameters(argv + ["--device", "cpu"])
    trainer = Trainer(args, model_config(args, len(SHAPE_CLASSES)))
    trainer.load(str(steps), restore_training=False)
    return {"variant": name, "flags": flags, "version": version, "minutes": round(minutes, 1),
            "gammas": attention_gammas(trainer.G_eval), "G": trainer.G_eval}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default="ablation")
    a = p.parse_args(argv)
    out = Path(a.out)
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
