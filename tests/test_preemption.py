"""Preemption and feedback: stop signals to the process group (loader workers, torchrun ranks),
signals during a save, no new phase after a signal, progress lines, and bad input (round two)."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import checkpoints
import metrics
import trainer as trainer_module
from checkpoints import RunLock, checkpoint_path, load_checkpoint
from main import main
import fakedata
from test_reliability import _flat_state

ROOT = Path(__file__).resolve().parent.parent
BASE = shlex.split("--dataset shapes --max_images 64 --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 8 "
                   "--device cpu --log_step 1 --sample_step 1000 --attn_samples 0 --use_tensorboard false --seed 3")


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 240) -> list[str]:
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix) or time.time() > deadline:
            break
    return seen


def _group_alive(pgid: int) -> list[str]:
    r = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True)
    return r.stdout.split()


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_and_resumes_exactly(workdir: Path) -> None:
    """SIGTERM to the whole group (what SLURM, scancel and `timeout` do): the loader workers ignore it,
    the main process finishes its step, saves and exits 3; resuming matches an uninterrupted run bit for bit."""
    argv = BASE + ["--num_workers", "2", "--model_save_step", "1000"]
    cmd = [sys.executable, str(ROOT / "main.py"), *argv, "--version", "pg", "--total_step", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same threads as the runs compared in-process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    _wait_for_line(proc, "step 3/")
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-2000:]
    line = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
    assert len(line) == 1 and "received SIGTERM at step " in line[0], err
    step = int(line[0].split("at step ")[1].split(":")[0])
    assert [p.name for p in sorted((workdir / "models/pg").glob("*.pt"))] == [f"{step}.pt"]
    assert not _group_alive(proc.pid)  # the workers ended with the main process
    end = step + 2
    assert main(argv + ["--version", "pg", "--total_step", str(end), "--pretrained_model", "latest"]) == 0
    assert main(argv + ["--version", "straight", "--total_step", str(end)]) == 0
    a = _flat_state(load_checkpoint(workdir / f"models/pg/{end}.pt"))
    b = _flat_state(load_checkpoint(workdir / f"models/straight/{end}.pt"))
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_sigterm_to_a_torchrun_group_saves_once_and_every_rank_exits_3(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "REPORT_DIR": str(reports), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), *BASE, "--num_workers", "2", "--batch_size", "4", "--version", "tr",
           "--total_step", "100000", "--model_save_step", "1000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_line(proc, "step 3/")
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)  # torchrun itself reports the signal with its own traceback
    deadline = time.time() + 60
    while time.time() < deadline and len(list(reports.glob("report_*.json"))) < 2:
        time.sleep(0.2)
    r0, r1 = (json.loads((reports / f"report_{r}.json").read_text()) for r in (0, 1))
    assert r0["exit"] == 3 and r1["exit"] == 3, err[-3000:]
    stopped = sorted(ln for ln in err.splitlines() if ln.startswith("stopped:"))
    assert len(stopped) == 2 and "rank 0 of 2" in stopped[0] and "rank 1 of 2" in stopped[1], err[-3000:]
    step = int(stopped[0].split("at step ")[1].split(":")[0])
    assert f"at step {step}:" in stopped[1]  # the ranks agreed on the step
    assert [p.name for p in (tmp_path / "models/tr").glob("*.pt")] == [f"{step}.pt"]
    assert r1["writes"] == [] and r0["writes"].count(f"models/tr/{step}.pt") == 1
    assert load_checkpoint(tmp_path / f"models/tr/{step}.pt")["step"] == step


def test_signals_during_a_save_do_not_corrupt_it(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """SIGTERM and two SIGINTs arrive while step 2's checkpoint is being written: the write completes, no
    further step runs, and the run ends with that checkpoint, exit 3."""
    original = trainer_module.write_checkpoint

    def signalled_write(state: dict, *a: object, **k: object) -> Path:
        if state["step"] == 2:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGINT):
                os.kill(os.getpid(), sig)
        return original(state, *a, **k)

    monkeypatch.setattr(trainer_module, "write_checkpoint", signalled_write)
    assert main(BASE + ["--num_workers", "0", "--version", "s", "--total_step", "50", "--model_save_step", "2"]) == 3
    err = capsys.readouterr().err
    assert "stopped: received SIGTERM at step 2: saved models/s/2.pt" in err
    assert load_checkpoint(workdir / "models/s/2.pt")["step"] == 2
    assert (workdir / "models/s/latest").read_text().strip() == "2.pt"
    assert sorted(p.name for p in (workdir / "models/s").iterdir() if p.name.startswith(".") and p.name != ".lock") == []


def test_no_sample_or_evaluation_phase_starts_after_a_signal(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    phases: list[str] = []
    original = trainer_module.Trainer.iteration

    def iteration(self: trainer_module.Trainer, batches):  # type: ignore[no-untyped-def]
        out = original(self, batches)
        phases.append(f"step {self.step}")
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # during the step that is also a sample step
        return out

    monkeypatch.setattr(trainer_module.Trainer, "iteration", iteration)
    monkeypatch.setattr(trainer_module.Trainer, "sample", lambda self, *a: phases.append("sample"))
    assert main(BASE + ["--num_workers", "0", "--version", "p", "--total_step", "50", "--sample_step", "2"]) == 3
    assert phases == ["step 1", "step 2", "sample", "step 3", "step 4"]
    assert "at step 4: saved models/p/4.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """The first step's line comes at once (with s/step and ETA), and the reference-statistics phase says
    what it computes, how many images and where it caches them, with progress lines."""
    weights = fakedata.inception_weights(tmp_path / "inception.pth")
    cmd = [sys.executable, str(ROOT / "main.py"), *BASE, "--num_workers", "0", "--version", "prog", "--total_step", "2",
           "--log_step", "100", "--eval_step", "2", "--eval_samples", "32", "--eval_ref_samples", "48", "--eval_batch_size", "16",
           "--inception_weights", str(weights), "--eval_cache_dir", str(tmp_path / "cache"), "--eval_metric", "inception"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SAGAN_PROGRESS_SECONDS": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    first = [ln for ln in r.stdout.splitlines() if ln.startswith("step 1/2")]
    assert first and " s/step " in first[0] and " eta " in first[0], r.stdout
    assert f"reference statistics: Inception pool3 features of 48 of the 64 shapes training images at 32 px " \
           f"(computed once, cached at {tmp_path / 'cache'}/refstats/" in r.stderr, r.stderr
    assert "reference statistics: 16/48 images (33%)" in r.stderr and "images/s" in r.stderr and " left" in r.stderr
    assert "evaluation: Inception features of 32 samples: " in r.stderr


def test_cpu_inception_over_many_images_warns_once_with_the_time_and_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from data_loader import Shapes

    monkeypatch.setattr(metrics, "CPU_WARN_IMAGES", 20)
    monkeypatch.setattr(metrics, "_warned", set())
    net = metrics.Inception(fakedata.inception_weights(tmp_path / "w.pth"), torch.device("cpu"))
    metrics.reference_stats(Shapes(32, size=40), "shapes", 32, net, tmp_path / "cache", 0, batch_size=16)
    metrics.dataset_features(Shapes(32, size=40), net, 16, what="reference statistics")
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "Inception on the CPU over 40 images will take about" in warnings[0] and "--eval_ref_samples N" in warnings[0]


# -- bad input, round two: one line, exit 2, nothing written ------------------------------------


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _trained(workdir: Path, version: str, steps: int = 2) -> Path:
    assert main(BASE + ["--num_workers", "0", "--version", version, "--total_step", str(steps), "--model_save_step", str(steps)]) == 0
    return workdir / "models" / version


def _folder_of(workdir: Path, name: str, make: Callable[[Path, int], object]) -> Path:
    folder = workdir / name
    folder.mkdir()
    for i in range(5):
        make(folder, i)
    return folder


def test_data_dir_that_is_a_file(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "images.zip").write_bytes(b"PK")
    for dataset in ("folder", "celeb", "cifar10", "lsun"):
        err = _one_line_error(BASE + ["--dataset", dataset, "--data_dir", "images.zip", "--total_step", "1"], capsys)
        assert "--data_dir images.zip is a file, not a folder" in err


def test_image_folder_of_1x1_images_or_unsupported_formats(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = _folder_of(workdir, "tiny", lambda f, i: Image.new("RGB", (1, 1), (i, i, i)).save(f / f"{i}.png"))
    err = _one_line_error(BASE + ["--dataset", "folder", "--data_dir", str(tiny), "--total_step", "1"], capsys)
    assert "too small to train on" in err and "1x1" in err
    other = _folder_of(workdir, "other", lambda f, i: (f / f"{i}.heic").write_bytes(b"\0" * 64))
    (other / "notes.svg").write_text("<svg/>")
    err = _one_line_error(BASE + ["--dataset", "folder", "--data_dir", str(other), "--total_step", "1"], capsys)
    assert "it holds only .heic, .svg files; supported: .jpg" in err
    err = _one_line_error(BASE + ["--dataset", "celeb", "--data_dir", str(other), "--total_step", "1"], capsys)
    assert "CelebA not found" in err and ".heic" in err
    assert not (workdir / "models").exists() or not any((workdir / "models").rglob("*.pt"))


def test_pretrained_model_that_names_a_path_or_a_folder(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _trained(workdir, "a")
    err = _one_line_error(BASE + ["--version", "b", "--pretrained_model", str(folder / "2.pt")], capsys)
    assert f"pass --model_save_path {folder.parent} --version a --pretrained_model 2" in err
    err = _one_line_error(BASE + ["--version", "b", "--pretrained_model", str(folder)], capsys)
    assert "is a folder" in err and f"--model_save_path {folder.parent} --version a --pretrained_model latest" in err
    assert not (workdir / "models/b").exists()


def test_checkpoint_of_a_newer_format(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _trained(workdir, "n")
    ckpt = torch.load(folder / "2.pt", weights_only=True)
    ckpt["format"] = checkpoints.CHECKPOINT_FORMAT + 1
    torch.save(ckpt, folder / "2.pt")
    err = _one_line_error(BASE + ["--version", "n", "--total_step", "4", "--pretrained_model", "latest"], capsys)
    assert "written by a newer version of this code" in err and "git pull" in err
    assert sorted(p.name for p in folder.glob("*.pt")) == ["2.pt"]


def test_total_step_below_the_resumed_step(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _trained(workdir, "t", steps=3)
    err = _one_line_error(BASE + ["--version", "t", "--total_step", "2", "--pretrained_model", "latest"], capsys)
    assert "is at step 3, beyond --total_step 2" in err
    assert sorted(p.name for p in folder.glob("*.pt")) == ["3.pt"]


@pytest.mark.parametrize("flags,needle", [
    (["--eval_samples", "0"], "argument --eval_samples: expected a number >= 1, got '0'"),
    (["--eval_samples", "-5"], "argument --eval_samples: expected a number >= 1, got '-5'"),
    (["--batch_size", "0"], "argument --batch_size: expected a number >= 1, got '0'"),
    (["--preset", "fmnist32"], "--preset: unknown value 'fmnist32'; did you mean fmnist_32?"),
    (["--preset", "sagan_celeba_64"], "did you mean sagan_celeb_64?"),
    (["--adv_loss", "hinje"], "--adv_loss: unknown value 'hinje'; did you mean hinge?"),
    (["--device", "bogus"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'bogus'"),
    (["--seed", "1e20"], "argument --seed: expected a whole number from 0 to 4294967295, got '1e20'"),
    (["--max_images", "-5"], "argument --max_images: expected a number >= 0, got '-5'"),
    (["--ema_decay", "nan"], "argument --ema_decay: expected a number from 0 to 1, got 'nan'"),
    (["--attn_points", "999,999"], "argument --attn_points: attention point (999,999) is outside the 32x32 image (x and y from 0 to 31)"),
    (["--eval_samples", "5", "--eval_step", "2"], "argument --eval_samples: expected a number >= 10"),
])
def test_flag_values_are_one_line_with_a_suggestion(workdir: Path, capsys: pytest.CaptureFixture, flags: list[str], needle: str) -> None:
    assert needle in _one_line_error(BASE + flags, capsys)


def test_model_save_path_that_cannot_be_written(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "file").write_text("not a folder")  # root ignores permission bits: a file in the path fails for everyone
    err = _one_line_error(BASE + ["--version", "w", "--total_step", "1", "--model_save_path", "file/models"], capsys)
    assert "cannot write to file/models/w" in err and "pass a writable --model_save_path" in err


def test_second_run_on_the_same_version_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with RunLock(workdir / "models/busy"):  # another training run holds the folder
        err = _one_line_error(BASE + ["--version", "busy", "--total_step", "1"], capsys)
    assert f"models/busy is in use by another training run (pid {os.getpid()} on " in err and "another --version" in err
    assert not list((workdir / "models/busy").glob("*.pt"))
    assert main(BASE + ["--num_workers", "0", "--version", "busy", "--total_step", "1"]) == 0  # released: it runs now


@pytest.mark.slow
def test_concurrent_processes_never_interleave_checkpoints(workdir: Path) -> None:
    cmd = [sys.executable, str(ROOT / "main.py"), *BASE, "--num_workers", "0", "--version", "c", "--total_step", "100000"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_line(first, "step 1/")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2 and second.stderr.strip().count("\n") == 0, second.stderr
    assert f"is in use by another training run (pid {first.pid} on" in second.stderr


def test_corrupt_latest_pointer(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _trained(workdir, "l")
    for garbage in (b"\x00\xff\x13garbage", b"", b"../../etc/passwd"):
        (folder / "latest").write_bytes(garbage)
        err = _one_line_error(BASE + ["--version", "l", "--total_step", "4", "--pretrained_model", "latest"], capsys)
        assert "models/l/latest is corrupt" in err and "--pretrained_model STEP with one of the steps there (2)" in err
    assert sorted(p.name for p in folder.glob("*.pt")) == ["2.pt"]


def test_save_of_a_large_model_is_announced_with_its_size_and_time(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(trainer_module, "REPORT_SAVE_BYTES", 1)
    assert main(BASE + ["--num_workers", "0", "--version", "big", "--total_step", "1"]) == 0
    err = capsys.readouterr().err
    assert "writing checkpoint models/big/1.pt (" in err and "MiB)" in err and "wrote models/big/1.pt in " in err
    size = trainer_module.state_bytes(torch.load(workdir / "models/big/1.pt", weights_only=True))
    assert abs(size - (workdir / "models/big/1.pt").stat().st_size) < 0.2 * size


def test_latest_on_a_new_version_starts_fresh_so_one_script_serves_every_requeue(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    argv = BASE + ["--num_workers", "0", "--version", "q", "--pretrained_model", "latest", "--model_save_step", "2"]
    assert main(argv + ["--total_step", "2"]) == 0
    out = capsys.readouterr().out
    assert "--pretrained_model latest: no checkpoint in models/q yet; starting at step 0" in out and "step 1/2" in out
    assert main(argv + ["--total_step", "4"]) == 0
    out = capsys.readouterr().out
    assert "resumed from models/q/2.pt at step 2" in out and "step 3/4" in out


def test_a_signal_abandons_a_running_evaluation(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """SIGTERM while Inception scores the step-2 samples: the evaluation stops at its next batch, nothing of
    it is recorded, and the run saves step 2 and exits 3 without waiting for the rest."""
    weights = fakedata.inception_weights(workdir / "inception.pth")
    calls = {"eval": 0}
    original = metrics.Inception.__call__

    def scoring(self: metrics.Inception, images: torch.Tensor):  # type: ignore[no-untyped-def]
        if calls.get("training"):
            calls["eval"] += 1
            if calls["eval"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, images)

    monkeypatch.setattr(metrics.Inception, "__call__", scoring)
    real_train = trainer_module.Trainer.train

    def train(self: trainer_module.Trainer) -> None:  # reference statistics are done: count the evaluation's batches
        calls["training"] = True
        real_train(self)

    monkeypatch.setattr(trainer_module.Trainer, "train", train)
    argv = BASE + ["--num_workers", "0", "--version", "e", "--total_step", "50", "--eval_step", "2", "--eval_samples", "32",
                   "--eval_batch_size", "8", "--eval_ref_samples", "16", "--inception_weights", str(weights),
                   "--eval_cache_dir", str(workdir / "cache"), "--eval_metric", "inception"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "evaluation at step 2 abandoned (evaluation: Inception features of 32 samples): a stop signal arrived" in err
    assert "stopped: received SIGTERM at step 2: saved models/e/2.pt" in err
    assert calls["eval"] == 1  # one of the four batches
    assert not (workdir / "models/e/metrics.jsonl").exists() or not (workdir / "models/e/metrics.jsonl").read_text().strip()
    assert load_checkpoint(workdir / "models/e/2.pt")["step"] == 2
    # The resume evaluates step 2 first (its record would otherwise be missing for good), then goes on.
    calls["training"] = False
    assert main([*argv[:argv.index("--total_step")], "--total_step", "3", *argv[argv.index("--total_step") + 2:],
                 "--pretrained_model", "latest"]) == 0
    out = capsys.readouterr().out
    assert "step 2 is an evaluation step without a record in metrics.jsonl (a stop came first): evaluating it now" in out
    records = [json.loads(ln) for ln in (workdir / "models/e/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]


def test_metrics_jsonl_with_a_cut_last_line_resumes_and_a_corrupt_middle_line_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _trained(workdir, "m", steps=2)
    records = folder / "metrics.jsonl"
    records.write_text('{"step": 1, "cls_acc": 0.5}\n{"step": 2, "cls_acc": 0.6}\n{"step": 2, "cls_a')  # killed during an append
    capsys.readouterr()
    assert main(BASE + ["--num_workers", "0", "--version", "m", "--total_step", "3", "--pretrained_model", "latest"]) == 0
    assert "dropped an incomplete last line" in capsys.readouterr().err
    assert records.read_text() == '{"step": 1, "cls_acc": 0.5}\n{"step": 2, "cls_acc": 0.6}\n'
    records.write_text('{"step": 1}\n{"step": 2, "cls_a\n{"step": 3}\n')
    err = _one_line_error(BASE + ["--version", "m", "--total_step", "4", "--pretrained_model", "latest"], capsys)
    assert "metrics.jsonl line 2 is corrupt" in err and "delete or repair that line" in err
    assert sorted(p.name for p in folder.glob("*.pt")) == ["2.pt", "3.pt"]


def test_resuming_an_ema_run_without_ema_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(BASE + ["--num_workers", "0", "--version", "e", "--total_step", "2", "--ema", "true", "--ema_start", "1"]) == 0
    capsys.readouterr()
    err = _one_line_error(BASE + ["--version", "e", "--total_step", "3", "--pretrained_model", "latest"], capsys)
    assert "holds an EMA generator, which resuming without --ema would drop; pass --ema true" in err
    assert main(BASE + ["--num_workers", "0", "--version", "e", "--total_step", "3", "--pretrained_model", "latest", "--ema", "true"]) == 0


@pytest.mark.slow
def test_an_error_in_a_loader_worker_ends_the_run_in_one_line_with_every_worker_gone(workdir: Path) -> None:
    """Every image has a readable header but undecodable data: the workers raise; the run must exit 2 with one
    line, not hang on workers that ignore SIGTERM."""
    folder = workdir / "broken"
    folder.mkdir()
    good = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good, format="PNG")
    for i in range(16):
        (folder / f"{i}.png").write_bytes(good.getvalue()[:60])  # header and size survive, the pixels do not
    cmd = [sys.executable, str(ROOT / "main.py"), "--dataset", "folder", "--data_dir", str(folder), "--imsize", "32",
           "--g_conv_dim", "8", "--d_conv_dim", "8", "--batch_size", "4", "--num_workers", "2", "--device", "cpu",
           "--attn_samples", "0", "--use_tensorboard", "false", "--total_step", "5", "--version", "w"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: none of the 16 images could be decoded"), err[-2000:]
    time.sleep(0.5)
    assert _group_alive(proc.pid) == []


def _spawn(workdir: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return err


@pytest.mark.slow
def test_sigterm_while_the_evaluator_is_built_exits_3_with_one_line(workdir: Path) -> None:
    from test_fmnist import fake_fmnist, tiny_run_flags

    fake_fmnist(workdir / "fm", n_train=1500, n_test=200)
    argv = tiny_run_flags(workdir, "--eval_step", "2", "--attn_samples", "0", "--version", "early")
    proc = _spawn(workdir, argv)
    for line in proc.stderr:  # the classifiers are being trained: the run holds its lock, and no step has run
        if "classifier metric: training" in line:
            break
    os.killpg(proc.pid, signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 3, err[-2000:]
    stopped = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
    assert len(stopped) == 1 and "received SIGTERM while building the evaluator, before the first step" in stopped[0], err
    assert "Traceback" not in err and not list((workdir / "models/early").glob("*.pt"))
    assert not list((workdir / "cache").rglob("*.pt"))  # the classifier's training was abandoned: no cache entry, whole or cut


@pytest.mark.slow
def test_a_storm_of_sigterms_while_saving_every_step_exits_3_once(workdir: Path) -> None:
    proc = _spawn(workdir, BASE + ["--num_workers", "0", "--model_save_step", "1", "--total_step", "100000", "--version", "storm"])
    _wait_for_line(proc, "step 3/")
    for _ in range(30):
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.01)
    err = _finish(proc)
    assert proc.returncode == 3, err[-2000:]
    assert len([ln for ln in err.splitlines() if ln.startswith("stopped:")]) == 1 and "Traceback" not in err, err
    folder = workdir / "models/storm"
    assert load_checkpoint(checkpoint_path(folder, "latest"))["step"] >= 3


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_in_one_line(workdir: Path) -> None:
    proc = _spawn(workdir, BASE + ["--num_workers", "0", "--model_save_step", "2", "--total_step", "100000", "--version", "cc"])
    _wait_for_line(proc, "step 3/")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 3, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("stopped") and ("stopped at once by a second interrupt" in last or "received SIGINT" in last), err
    folder = workdir / "models/cc"
    assert load_checkpoint(checkpoint_path(folder, "latest"))["step"] >= 2  # the last complete checkpoint is intact


def test_after_a_recorded_stop_a_late_sigterm_is_swallowed_not_fatal() -> None:
    """A scheduler that repeats SIGTERM while the run exits must not turn exit 3 into death by signal."""
    from trainer import StopRecorder

    import trainer

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with StopRecorder() as stops:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stops.signal == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # with the default handler back, this would kill the test process
        assert signal.getsignal(signal.SIGTERM) is trainer._ignore  # a Python no-op: exec'd children get the default
        assert signal.getsignal(signal.SIGINT) == before[1]
        found = signal.getsignal(signal.SIGTERM)
        with StopRecorder():
            assert signal.getsignal(signal.SIGTERM) != found
        assert signal.getsignal(signal.SIGTERM) == found  # no stop recorded in this one: it restores what it found
    finally:
        signal.signal(signal.SIGTERM, before[0])
