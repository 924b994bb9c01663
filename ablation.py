"""The `shapes` ablation: where attention goes, and the non-local span, on a CPU in under an hour.

    python ablation.py                 # 6 variants x 1800 steps of the demo model, then the table
    python ablation.py --steps 300     # a quicker, noisier pass

Every variant is the `demo` preset (class-conditional ResNet SAGAN, 32 px, `shapes`) with the same
seed and number of steps; only attention placement and span change. The score needs no download: a
small CNN is trained on `shapes` itself (held-out accuracy printed), then applied to class-conditional
samples of each generator (`metrics.generate`: 2,000 fixed latents, uniform labels, G in eval mode).
"Class accuracy" is the fraction of samples that the classifier assigns to the class G was asked for.
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
from torch import Tensor, nn

from data_loader import SHAPE_CLASSES, Shapes
from main import main as run_main
from metrics import generate
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


class ShapeClassifier(nn.Sequential):
    """conv-ReLU-pool x3, linear: 32 px RGB -> 4 shape classes."""

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        super().__init__(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, len(SHAPE_CLASSES)))


def as_input(x_uint8: Tensor) -> Tensor:
    return x_uint8.float() / 127.5 - 1.0


def train_classifier(path: Path, epochs: int = 3, seed: int = 0) -> tuple[ShapeClassifier, float]:
    """Train on the 10,000 `shapes` images (or load from `path`); accuracy on 2,000 held-out ones."""
    torch.manual_seed(seed)
    net = ShapeClassifier()
    test = Shapes(32, size=2000, seed=7)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        train = Shapes(32)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(train), generator=g).split(128):
                loss = nn.functional.cross_entropy(net(as_input(train.images[idx])), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(as_input(test.images[i:i + 500])).argmax(1) for i in range(0, len(test), 500)])
    return net, (pred == test.labels).float().mean().item()


@torch.no_grad()
def class_accuracy(G: nn.Module, net: nn.Module, n: int = 2000) -> tuple[float, list[float]]:
    """Overall and per-class fraction of G's samples that the classifier puts in the requested class."""
    hits, labels = [], []
    for imgs, y in generate(G, n, 250, torch.device("cpu")):
        hits.append(net(as_input(imgs)).argmax(1) == y)
        labels.append(y)
    hit, lab = torch.cat(hits).float(), torch.cat(labels)
    per_class = [hit[lab == c].mean().item() for c in range(len(SHAPE_CLASSES))]
    return hit.mean().item(), per_class


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
    net, held_out = train_classifier(out / "shape_classifier.pt")
    print(f"shape classifier: {held_out:.1%} on 2,000 held-out shapes images", flush=True)
    rows = []
    for name, flags in VARIANTS:
        r = run_variant(name, flags, a.steps, out, a.seed)
        acc, per_class = class_accuracy(r.pop("G"), net)
        r.update({"class_accuracy": acc, "per_class": per_class})
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
