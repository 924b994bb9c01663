"""End to end: the seed command lines train on miniature data; resume, sampling, dry runs and errors."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fakedata
import visualize
from main import main
from parameter import get_parameters, model_config, train_options
from trainer import Trainer
from test_parameter import SEED_LINES

ROOT = Path(__file__).resolve().parent.parent
# Appended to each seed line: a tiny model and a few steps (later flags override earlier ones).
TINY = shlex.split("--g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 4 --num_workers 0 --total_step 2 "
                   "--log_step 1 --sample_step 1 --model_save_step 2")


def tiny_trainer(*flags: str) -> Trainer:
    """A Trainer of the TINY model at 32 px, 4 classes, batch 8 and no data loader, for tests that drive its updates."""
    args = get_parameters(["--imsize", "32", "--num_classes", "4", *TINY, "--batch_size", "8", *flags])
    return Trainer(train_options(args), model_config(args, 4))


def _scalars(logdir: Path) -> set[str]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return set(acc.Tags()["scalars"]) | {f"image:{t}" for t in acc.Tags()["images"]}


@pytest.mark.slow
@pytest.mark.parametrize("line", SEED_LINES)
def test_seed_lines_train(workdir: Path, line: str, capsys: pytest.CaptureFixture) -> None:
    if "lsun" in line:
        fakedata.lsun(workdir / "data", n=8)
    else:
        fakedata.celeba(workdir / "data", n=8)
    argv = shlex.split(line)
    version = argv[argv.index("--version") + 1]
    assert main(argv + TINY) == 0
    out = capsys.readouterr().out
    assert "step 2/2 d_loss" in out and "img/s" in out
    assert (workdir / "samples" / version / "1_fake.png").is_file()
    assert (workdir / "samples" / version / "2_fake.png").is_file()
    assert (workdir / "models" / version / "2.pt").is_file()
    assert (workdir / "models" / version / "latest").read_text().strip() == "2.pt"
    options = json.loads((workdir / "models" / version / "training_options.json").read_text())
    assert options["model_config"]["span"] == (3 if "--span 3" in line else 0)
    machine = options["machine"]  # what decides whether a seeded run repeats elsewhere
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu"]
    assert machine["python"] == platform.python_version() and ("gpu" in machine) == options["device"].startswith("cuda")
    tags = _scalars(workdir / "logs" / version)
    assert {"loss/d", "loss/g", "d/real", "d/fake", "lr/g", "lr/d", "speed/img_per_s", "image:samples"} <= tags
    assert any(t.startswith("gamma/G.") for t in tags) and any(t.startswith("gamma/D.") for t in tags)


def test_resume_continues_with_optimizer_state(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--dataset", "shapes", "--max_images", "32", "--imsize", "32", "--version", "r", *TINY]
    assert main(base + ["--total_step", "3", "--model_save_step", "3"]) == 0
    saved = torch.load(workdir / "models/r/3.pt", weights_only=True)
    assert saved["step"] == 3 and saved["opt_d"]["state"][0]["step"].item() == 3
    capsys.readouterr()
    assert main(base + ["--total_step", "5", "--model_save_step", "5", "--pretrained_model", "latest"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 3" in out
    assert "step 4/5" in out and "step 1/5" not in out
    resumed = torch.load(workdir / "models/r/5.pt", weights_only=True)
    assert resumed["step"] == 5
    assert resumed["opt_d"]["state"][0]["step"].item() == 5  # Adam's counters continued from 3
    assert resumed["opt_g"]["state"][0]["step"].item() == 5


def test_resume_from_step_number_and_missing_step(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--dataset", "shapes", "--max_images", "32", "--imsize", "32", "--version", "s", *TINY]
    assert main(base + ["--model_save_step", "1"]) == 0
    assert main(base + ["--total_step", "3", "--pretrained_model", "1"]) == 0
    assert "at step 1" in capsys.readouterr().out
    assert main(base + ["--pretrained_model", "7"]) == 2
    assert "no checkpoint for step 7" in capsys.readouterr().err


def test_checkpoint_from_another_architecture(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--dataset", "shapes", "--max_images", "32", "--imsize", "32", "--version", "a", *TINY]
    assert main(base) == 0
    assert main(base + ["--arch", "dcgan", "--total_step", "3", "--pretrained_model", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different model" in err and "arch: checkpoint 'resnet' vs now 'dcgan'" in err and "\n" not in err


def test_sample_from_checkpoint(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--dataset", "shapes", "--max_images", "32", "--imsize", "32", "--version", "p", *TINY]) == 0
    capsys.readouterr()
    # The model comes from the checkpoint's own config, so flags such as --imsize need not be repeated.
    assert main(["--train", "false", "--version", "p", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and (workdir / "samples/p/2_sample.png").is_file()


def test_fixed_grid_drawn_in_eval_mode_then_back_to_train(workdir: Path) -> None:
    args = get_parameters(["--imsize", "32", *TINY])
    trainer = Trainer(train_options(args), model_config(args, 4))
    modes = []
    trainer.G.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    trainer.G.train()
    grid = visualize.write_sample_grid(trainer.G_eval, trainer.fixed_z, trainer.fixed_y, workdir / "grid.png")
    assert modes == [False] and trainer.G.training
    assert grid.shape[1:] == (2 + 4 * 34, 2 + 8 * 34) == Image.open(workdir / "grid.png").size[::-1]  # one row per class, 8 columns, 32 px + 2 px padding
    assert torch.equal(trainer.fixed_y, torch.arange(4).repeat_interleave(8))


def test_dry_run_prints_config_and_counts(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--dataset", "cifar10", "--imsize", "32", "--g_attn", "16", "--d_attn", "16", "--g_conv_dim", "64", "--dry_run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "G parameters: 4,386,308" in out and "D parameters: 1,075,586" in out
    assert not (workdir / "models").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--dataset", "celeb"], "CelebA not found"),
        (["--imsize", "32", "--g_attn", "4"], "generator attention at 4x4 is impossible for resnet 32 px"),
        (["--dataset", "shapes", "--num_classes", "7", "--max_images", "8", "--batch_size", "4"], "does not fit dataset 'shapes'"),
        (["--train", "false", "--version", "nothing"], "no checkpoint in"),
    ],
)
def test_cli_errors_are_one_line(workdir: Path, argv: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


@pytest.mark.slow
def test_short_shapes_run_learns(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """Losses leave their initial values and the samples move from noise towards the data's colour statistics."""
    from data_loader import Shapes

    argv = ["--dataset", "shapes", "--imsize", "32", "--max_images", "512", "--g_conv_dim", "8", "--d_conv_dim", "16",
            "--batch_size", "16", "--num_workers", "0", "--total_step", "150", "--log_step", "10", "--sample_step", "150",
            "--model_save_step", "150", "--version", "learn", "--use_tensorboard", "false"]
    real = Shapes(32, size=512).images.float() / 127.5 - 1

    def histogram_distance(imgs: torch.Tensor) -> float:
        bins = torch.linspace(-1, 1, 17)
        h = lambda t: torch.histogram(t.flatten().float().clamp(-1, 1), bins=bins)[0] / t.numel()  # noqa: E731
        return (h(imgs) - h(real)).abs().sum().item()

    def samples(step: str | None) -> torch.Tensor:
        args = get_parameters(argv + (["--pretrained_model", step] if step else []))
        t = Trainer(train_options(args), model_config(args, 4))
        if step:
            t.load(step, restore_training=False)
        t.G.eval()
        with torch.no_grad():
            return t.G(t.fixed_z, t.fixed_y)

    before = samples(None)
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    first, last = lines[0].split(), lines[-1].split()
    d0, g0 = float(first[first.index("d_loss") + 1]), float(first[first.index("g_loss") + 1])
    losses_d = [float(ln.split()[ln.split().index("d_loss") + 1]) for ln in lines]
    assert max(abs(v - d0) for v in losses_d) > 0.1 and abs(float(last[last.index("g_loss") + 1]) - g0) > 0.01
    after = samples("150")
    assert (after - before).abs().mean() > 0.1
    assert histogram_distance(after) < 0.6 * histogram_distance(before)
