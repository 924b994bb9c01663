"""Reliability: exact resume, kills at random moments, SIGTERM, divergence, bad input, safe loading."""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
from data_loader import build_dataset, open_rgb
from main import main
from parameter import data_spec, get_parameters, model_config, train_options
from checkpoints import CheckpointError, load_checkpoint
from trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
# 32 images in batches of 8: 4 batches per epoch, so the runs below cross epoch boundaries.
BASE = shlex.split("--dataset shapes --max_images 32 --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 8 "
                   "--num_workers 0 --device cpu --log_step 1 --sample_step 100 --attn_samples 0 --use_tensorboard false --seed 5")


def flat_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples, by its dotted path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: t for key, v in items for k, t in flat_tensors(v, f"{prefix}.{key}" if prefix else str(key)).items()}


def _flat_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return flat_tensors({key: ckpt.get(key) for key in ("G", "D", "G_ema", "opt_g", "opt_d", "scaler")})


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["", "--ema true --ema_start 2 --ema_decay 0.9 --amp bf16 --flip true --n_dis 2 --d_mbstd 2 "
                                   "--g_shared_dim 8 --g_hier true --ms_weight 1 --d_ac true"])
def test_resume_is_bit_identical(workdir: Path, extra: str, capsys: pytest.CaptureFixture) -> None:
    argv = BASE + shlex.split(extra)
    assert main(argv + ["--version", "full", "--total_step", "6", "--model_save_step", "6"]) == 0
    assert main(argv + ["--version", "half", "--total_step", "3", "--model_save_step", "3"]) == 0
    capsys.readouterr()
    assert main(argv + ["--version", "half", "--total_step", "6", "--model_save_step", "6", "--pretrained_model", "latest"]) == 0
    out = capsys.readouterr().out
    assert "step 4/6" in out and "step 3/6" not in out  # the log continues without repeating a step
    assert "resumed with lr" not in out  # the same flags: the saved schedule is kept untouched
    full = load_checkpoint(workdir / "models/full/6.pt")
    half = load_checkpoint(workdir / "models/half/6.pt")
    a, b = _flat_state(full), _flat_state(half)
    assert a.keys() == b.keys() and len(a) > 50
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    assert full["data"] == half["data"] and full["data"]["epoch"] >= 1
    if "--ema" in extra:
        assert full["G_ema"] is not None


def test_resume_follows_a_changed_learning_rate_schedule(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    argv = BASE + ["--version", "sched", "--g_lr", "0.001", "--d_lr", "0.002", "--lr_decay", "0.5"]
    assert main(argv + ["--total_step", "3", "--model_save_step", "3", "--lr_decay_step", "2"]) == 0
    saved = load_checkpoint(workdir / "models/sched/3.pt")
    assert [g["lr"] for g in saved["opt_g"]["param_groups"]] == [0.0005]  # decayed at step 2
    capsys.readouterr()
    assert main(argv + ["--total_step", "5", "--model_save_step", "5", "--lr_decay_step", "4", "--g_lr", "0.0008",
                        "--pretrained_model", "3"]) == 0
    out = capsys.readouterr().out
    assert "trained G at lr 0.001 x 0.5 every 2 steps; resumed with lr 0.0008 x 0.5 every 4 steps (now 0.0008)" in out
    assert "trained D at lr 0.002 x 0.5 every 2 steps; resumed with lr 0.002 x 0.5 every 4 steps (now 0.002)" in out
    end = load_checkpoint(workdir / "models/sched/5.pt")
    assert [g["lr"] for g in end["opt_g"]["param_groups"]] == [0.0004]  # 0.0008 halved once, at step 4
    assert [g["lr"] for g in end["opt_d"]["param_groups"]] == [0.001]
    assert end["sched_g"]["step_size"] == 4 and end["sched_g"]["base_lrs"] == [0.0008]


def _train_cmd(version: str, extra: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), *BASE, "--version", version, "--total_step", "100000", *extra]


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(2026)
    folder = workdir / "models/k"
    resumed_from = []
    for attempt in range(5):
        extra = ["--model_save_step", "1", "--keep_last", "2"] + (["--pretrained_model", "latest"] if attempt else [])
        proc = subprocess.Popen(_train_cmd("k", extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = (folder / "latest").read_text() if (folder / "latest").exists() else None
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait for a new checkpoint, then kill at a random moment
            if (folder / "latest").exists() and (folder / "latest").read_text() != before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(folder / (folder / "latest").read_text().strip())
        resumed_from.append(ckpt["step"])
        # --keep_last 2; one more only when the kill fell between a checkpoint's rename and the pruning after it
        assert len(list(folder.glob("[0-9]*.pt"))) <= 3
    assert resumed_from == sorted(resumed_from) and resumed_from[-1] > resumed_from[0]
    step = resumed_from[-1]
    assert main(BASE + ["--version", "k", "--total_step", str(step + 1), "--pretrained_model", "latest", "--keep_last", "2"]) == 0
    assert f"at step {step}" in capsys.readouterr().out
    assert load_checkpoint(folder / f"{step + 1}.pt")["step"] == step + 1
    assert sorted(int(f.stem) for f in folder.glob("[0-9]*.pt")) == [step, step + 1]  # a clean save prunes any leftover


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_3(workdir: Path) -> None:
    proc = subprocess.Popen(_train_cmd("t", ["--model_save_step", "1000"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert err.strip().startswith("stopped: received SIGTERM at step ") and "resume with --pretrained_model latest" in err
    step = int(err.split("at step ")[1].split(":")[0])
    assert step >= 3 and load_checkpoint(workdir / f"models/t/{step}.pt")["step"] == step
    assert (workdir / "models/t/latest").read_text().strip() == f"{step}.pt"


def test_nan_in_discriminator_stops_training_without_a_nan_checkpoint(workdir: Path) -> None:
    args = get_parameters(BASE + ["--version", "nan", "--total_step", "2", "--model_save_step", "1"])
    from data_loader import get_loader

    dataset, _ = build_dataset(data_spec(args))
    t = Trainer(train_options(args), model_config(args, 4), get_loader(dataset, torch.device("cpu"), args.batch_size, 0, 0))
    t.train()
    with torch.no_grad():
        next(t.D.parameters()).view(-1)[0] = float("nan")
    t.opts.total_step = 5
    with pytest.raises(FloatingPointError) as e:
        t.train()
    msg = str(e.value)
    assert "non-finite loss or weights at step 3" in msg and "models/nan/2.pt" in msg and "--pretrained_model 2" in msg
    with pytest.raises(FloatingPointError, match="non-finite weights in (G, )?D at step 3; not saved"):
        t.save()
    saved = sorted(p.name for p in (workdir / "models/nan").glob("*.pt"))
    assert saved == ["1.pt", "2.pt"]
    for name in saved:
        assert all(torch.isfinite(v).all() for v in load_checkpoint(workdir / "models/nan" / name)["D"].values() if v.is_floating_point())


@pytest.fixture()
def small_disk(workdir: Path) -> Iterator[Callable[[int], Path]]:
    """mount(size_bytes) -> a fresh tmpfs of that size (a real full filesystem; needs root, as the tests run)."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        point = workdir / f"disk{len(mounts)}"
        point.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(workdir: Path, small_disk: Callable[[int], Path],
                                                                           capsys: pytest.CaptureFixture,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(BASE + ["--version", "size", "--total_step", "2", "--model_save_step", "2"]) == 0
    size = (workdir / "models/size/2.pt").stat().st_size
    disk = small_disk(int(size * 1.6) + 64 * 1024)  # room for one checkpoint, not two
    flags = BASE + ["--version", "d", "--model_save_path", str(disk), "--model_save_step", "2"]
    capsys.readouterr()
    assert main(flags + ["--total_step", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: could not write {disk}/d/4.pt: the disk is full (") and "MiB free)" in err
    assert f"the previous checkpoint {disk}/d/2.pt is kept" in err
    folder = disk / "d"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "2.pt", "latest", "training_options.json"]  # nothing half-written
    assert load_checkpoint(folder / "2.pt")["step"] == 2 and (folder / "latest").read_text().strip() == "2.pt"
    # a stop signal in progress when the disk is full: the same line, exit 3
    real = Trainer.iteration

    def signalled(self: Trainer, batches: object) -> dict:
        out = real(self, batches)
        if self.step == 3:
            self.stops.signal = "SIGTERM"
        return out

    monkeypatch.setattr(Trainer, "iteration", signalled)
    assert main(flags + ["--total_step", "10", "--pretrained_model", "latest"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: could not write {disk}/d/3.pt: the disk is full ("), err
    monkeypatch.setattr(Trainer, "iteration", real)
    # the sample grid on a full disk: one line too, and no partial PNG
    samples = small_disk(64 * 1024)
    (samples / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    assert main(BASE + ["--version", "g", "--total_step", "2", "--sample_step", "1", "--sample_path", str(samples)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: could not write the sample grid {samples}/g/1_fake.png: the disk is full")
    assert not list((samples / "g").glob("*.png*")) and not list((samples / "g").glob(".*tmp"))


def test_keep_last_prunes_by_write_order_and_keeps_what_latest_names(workdir: Path) -> None:
    flags = BASE + ["--version", "k", "--model_save_step", "1"]
    assert main(flags + ["--total_step", "3"]) == 0  # 1.pt 2.pt 3.pt
    assert main(flags + ["--total_step", "3", "--pretrained_model", "1", "--keep_last", "1"]) == 0  # from step 1: new 2.pt, 3.pt
    folder = workdir / "models/k"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["3.pt"] and (folder / "latest").read_text().strip() == "3.pt"
    assert load_checkpoint(folder / "3.pt")["step"] == 3
    # resumed from an earlier step with room for one: the new file stays, however the step numbers sort
    assert main(flags + ["--total_step", "6", "--pretrained_model", "latest"]) == 0
    os.utime(folder / "6.pt", ns=(1, 1))  # 6.pt now looks oldest by write order, but latest names it
    checkpoints.prune(folder, 1)
    assert (folder / "6.pt").is_file()


def test_keep_last_never_removes_best(workdir: Path) -> None:
    args = get_parameters(BASE + ["--version", "keep", "--keep_last", "2"])
    t = Trainer(train_options(args), model_config(args, 4))
    for step in range(1, 6):
        t.step = step
        t.save()
        if step == 2:
            t.save("best_fid")
    names = sorted(p.name for p in (workdir / "models/keep").glob("*.pt"))
    assert names == ["4.pt", "5.pt", "best_fid.pt"]


def test_malicious_checkpoint_is_refused(workdir: Path) -> None:
    marker = workdir / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    folder = workdir / "models/evil"
    folder.mkdir(parents=True)
    torch.save({"format": 1, "payload": Evil()}, folder / "1.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder / "1.pt")
    msg = str(e.value)
    assert "refused to load" in msg and "holds objects that this code does not load (posix.system)" in msg
    assert "weights_only" not in msg and len(msg.splitlines()) == 1  # never torch's advice to load it unsafely
    assert not marker.exists()
    (folder / "2.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        load_checkpoint(folder / "2.pt")
    (folder / "3.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty \\(0 bytes\\)"):
        load_checkpoint(folder / "3.pt")


def test_a_fifo_as_a_checkpoint_is_refused_without_opening_it(workdir: Path) -> None:
    folder = workdir / "models/fifo"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "4.pt")  # opening it for reading would block until a writer comes
    with pytest.raises(CheckpointError, match="is a FIFO \\(named pipe\\), not a checkpoint file"):
        load_checkpoint(folder / "4.pt")


# -- bad images ---------------------------------------------------------------------------------


def _folder(root: Path, good: int, bad: dict[str, bytes]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return root


def _truncated_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[:200]


def test_unreadable_images_are_skipped_with_a_count(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    data = _folder(workdir / "imgs", 200, {"zz_truncated.jpg": _truncated_jpeg()})
    argv = BASE + ["--dataset", "folder", "--data_dir", str(data), "--max_images", "0", "--batch_size", "67",
                   "--version", "bad", "--total_step", "3", "--model_save_step", "3", "--g_attn", "none", "--d_attn", "none"]
    assert main(argv) == 0  # 3 steps x 67 images read every image once
    err = capsys.readouterr().err
    assert "warning: 1 of 201 images could not be decoded and were skipped (e.g." in err and "zz_truncated.jpg" in err


def test_too_many_unreadable_images_stop_training(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    data = _folder(workdir / "imgs", 18, {"a_not_an_image.png": b"hello", "b_truncated.jpg": _truncated_jpeg()})
    argv = BASE + ["--dataset", "folder", "--data_dir", str(data), "--max_images", "0", "--batch_size", "10",
                   "--version", "bad", "--total_step", "4", "--g_attn", "none", "--d_attn", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 of 20 images could not be decoded") and "more than 1% of the dataset" in err[0]


def test_image_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    gray16 = np.full((4, 4), 65535 // 2, np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.full((4, 4, 3), 30, np.uint8)).convert("P").save(tmp_path / "pal.png")
    g16 = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert g16.shape == (4, 4, 3) and abs(int(g16[0, 0, 0]) - 127) <= 1
    a = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert a[0, 0].tolist() == [255, 0, 0] and a[3, 0].tolist() == [255, 255, 255]
    assert np.asarray(open_rgb(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(open_rgb(tmp_path / "pal.png")).shape == (4, 4, 3)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--imsize", "48"], "invalid choice: 48"),
        (["--imsize", "32", "--d_attn", "3"], "discriminator attention at 3x3 is impossible"),
        (["--imsize", "32", "--g_attn", "8", "--span", "9"], "span"),
        (["--imsize", "32", "--arch", "dcgan", "--d_mbstd", "4"], "d_mbstd adds a feature map before the ResNet D's last block"),
        (["--imsize", "32", "--g_hier", "true"], "g_hier appends a chunk of z to the shared class embedding"),
        (["--imsize", "32", "--g_shared_dim", "8", "--g_hier", "true", "--z_dim", "18"], "z_dim 18 is not divisible by 4"),
        (["--batch_size", "64"], "--batch_size 64 is larger than the dataset (32 images)"),
        (["--ms_weight", "1", "--batch_size", "7"], "--ms_weight pairs G's batch in halves, so --batch_size must be even"),
        (["--ms_space", "d"], "--ms_space d sets where --ms_weight's term measures distance, and --ms_weight is 0"),
        (["--num_classes", "0", "--d_ac", "true"], "d_ac classifies images into the dataset's classes; use it with a labelled"),
        (["--ac_weight", "0.5"], "--ac_weight weighs the class loss of D's auxiliary classifier head, which is off"),
        (["--ac_g_weight", "0.5"], "--ac_g_weight weighs the class loss of D's auxiliary classifier head in G's loss"),
        (["--truncation", "-1"], "argument --truncation: expected a number >= 0, got '-1'"),
    ],
)
def test_impossible_settings_are_one_line(workdir: Path, argv: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), *BASE, "--total_step", "1", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert needle in lines[-1] and "Traceback" not in r.stderr, r.stderr


def test_inconsistent_checkpoints_are_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(BASE + ["--version", "i", "--total_step", "2", "--model_save_step", "2"]) == 0
    folder = workdir / "models/i"
    good = torch.load(folder / "2.pt", weights_only=True)
    resume = BASE + ["--version", "i", "--total_step", "3", "--pretrained_model", "latest"]
    cases = {
        "swapped": ({**good, "G": good["D"], "D": good["G"]}, "its G weights do not fit the model its own config describes"),
        "no config": ({k: v for k, v in good.items() if k != "model_config"}, "is incomplete: it has no model_config"),
    }
    for name, (state, needle) in cases.items():
        torch.save(state, folder / "2.pt")
        capsys.readouterr()
        assert main(resume) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, (name, err)
    (folder / "2.pt").write_bytes(b"")  # a zero-byte latest checkpoint
    capsys.readouterr()
    assert main(resume) == 2
    assert "is empty (0 bytes)" in capsys.readouterr().err
