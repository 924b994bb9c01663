"""Scale: torchrun with Gloo on the CPU, the EMA generator, gradient accumulation."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import spectral
from distributed import DistEnv, LaunchError, launch_env
from main import main
from parameter import get_parameters
from sagan_models import Generator, ModelConfig, SelfAttention
from parameter import model_config, train_options
from trainer import EMA, Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = shlex.split("--dataset shapes --max_images 64 --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 4 "
                   "--num_workers 0 --device cpu --log_step 1 --sample_step 2 --model_save_step 2 --attn_samples 1")


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """single process to step 2 -> torchrun x2 resumes to step 4 -> single process resumes to step 6."""
    monkeypatch.chdir(tmp_path)
    argv = [*TINY, "--version", "ddp", "--ema", "true", "--ema_start", "1", "--accum", "2"]
    assert main(argv + ["--total_step", "2"]) == 0
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "REPORT_DIR": str(reports), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), *argv, "--total_step", "4", "--pretrained_model", "latest"]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (json.loads((reports / f"report_{r}.json").read_text()) for r in (0, 1))
    assert r0["exit"] == 0 and r1["exit"] == 0
    assert r0["equal_after_step"] == [True, True] and r1["equal_after_step"] == [True, True]
    assert r0["first_batch_sum"] != r1["first_batch_sum"]  # the ranks read different data
    assert r1["writes"] == [], r1["writes"]  # only rank 0 writes
    assert {"models/ddp/4.pt", "models/ddp/latest"} <= set(r0["writes"]) and any(w.startswith("samples/ddp/4_fake") for w in r0["writes"])
    assert any(re.fullmatch(r"models/ddp/\.4\.pt\.\d+\.tmp", w) for w in r0["writes"])  # written beside, then renamed
    assert "resumed from models/ddp/2.pt at step 2" in run.stdout
    assert "saved by 1 process(es) on cpu, resumed by 2 on cpu: training resumes, but its random stream is not restored" in run.stdout
    assert "= 16 images per D update" in run.stdout and run.stdout.count("step 4/4") == 1
    ckpt = torch.load(tmp_path / "models/ddp/4.pt", weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["rng_ranks"]) == 2 and ckpt["G_ema"] is not None
    assert ckpt["data"]["world"] == 2
    capsys.readouterr()
    assert main(argv + ["--total_step", "6", "--pretrained_model", "latest"]) == 0
    out = capsys.readouterr().out
    assert "at step 4" in out and "step 5/6" in out and "step 6/6" in out
    assert "saved by 2 process(es) on cpu, resumed by 1 on cpu" in out


def test_launch_environment_errors(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch_env({}) == DistEnv()
    assert launch_env({"WORLD_SIZE": "1"}) == DistEnv()
    full = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_env(full) == DistEnv(1, 1, 2)
    with pytest.raises(LaunchError, match="MASTER_PORT missing; launch with: torchrun"):
        launch_env({k: v for k, v in full.items() if k != "MASTER_PORT"})
    with pytest.raises(LaunchError, match="RANK 2, LOCAL_RANK 0, WORLD_SIZE 2"):
        launch_env({**full, "RANK": "2", "LOCAL_RANK": "0"})
    for k, v in full.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RANK")
    assert main([*TINY, "--total_step", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: incomplete torchrun environment")


def test_sync_bn_and_parallel_need_the_right_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--total_step", "1", "--sync_bn", "true"]) == 2
    assert "--sync_bn needs CUDA" in capsys.readouterr().err


def _tiny_generator() -> Generator:
    return Generator(ModelConfig(imsize=32, g_conv_dim=8, z_dim=16, num_classes=4, g_attn=(16,)).resolved())


def test_ema_copies_before_start_then_matches_closed_form() -> None:
    G = _tiny_generator()
    decay, start = 0.9, 3
    ema = EMA(G, decay, start)
    floats = [k for k, v in G.state_dict().items() if v.is_floating_point()]
    vectors = [k for k in floats if k.endswith(("._u", "._v"))]  # spectral-norm u and v: the EMA model's own
    keys = [k for k in floats if k not in vectors]
    assert vectors and any(k.endswith("running_mean") for k in keys)  # SN and BN buffers
    history = []
    for step in range(1, 8):
        with torch.no_grad():
            for k in keys:
                G.state_dict()[k].add_(torch.randn_like(G.state_dict()[k]) * 0.1)
        history.append({k: G.state_dict()[k].double().clone() for k in keys})
        ema.update(step)
        if step < start:
            for k in floats:
                assert torch.equal(ema.model.state_dict()[k], G.state_dict()[k]), (step, k)
    # Closed form after step 7: e = d^(7-s+1) w_{s-1} + (1-d) sum_{t=s..7} d^(7-t) w_t with s = start.
    k_last = 7
    for k in keys:
        expected = decay ** (k_last - start + 1) * history[start - 2][k]
        for t in range(start, k_last + 1):
            expected = expected + (1 - decay) * decay ** (k_last - t) * history[t - 1][k]
        torch.testing.assert_close(ema.model.state_dict()[k].double(), expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(ema.model.state_dict()[keys[0]], G.state_dict()[keys[0]])
    for k in vectors:  # unit vectors, advanced on the EMA model's weights
        assert abs(ema.model.state_dict()[k].norm().item() - 1) < 1e-5, k


def test_ema_sigma_follows_its_own_weights_when_the_source_singular_vectors_turn() -> None:
    """G's weight turns by 10 degrees per step (W_t = R(10 t) diag(1, 0.3)), so its u turns with it. The average
    of the last ~10 u's has norm c ~ 0.5, and so has the averaged weight's sigma; sigma estimated with the
    averaged u would be c^2 (the weights then divided by too little); the EMA model's own power iteration
    gives c."""
    from spectral import spectral_norm

    layer = spectral_norm(nn.Linear(2, 2, bias=False))
    source = nn.Sequential(layer)
    ema = EMA(source, decay=0.9, start=1)
    for step in range(1, 61):
        t = torch.tensor(step * 10.0).deg2rad()
        rot = torch.stack([torch.stack([t.cos(), -t.sin()]), torch.stack([t.sin(), t.cos()])])
        with torch.no_grad():
            layer.parametrizations.weight.original.copy_(rot @ torch.diag(torch.tensor([1.0, 0.3])))
        spectral.power_iteration(source)  # the trainer's per-step iteration on G
        ema.update(step)
    w = ema.model[0].parametrizations.weight.original
    sigma = [sn for _, sn in spectral.sn_layers(ema.model)][0].sigma(w).item()
    true = torch.linalg.matrix_norm(w, ord=2).item()
    assert 0.4 < true < 0.65 and abs(sigma - true) < 0.02 * true, (sigma, true)


def _trainer(tmp_path: Path, extra: str) -> Trainer:
    args = get_parameters(shlex.split(f"--dataset shapes --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --device cpu "
                                      f"--model_save_path {tmp_path}/m --sample_path {tmp_path}/s --log_path {tmp_path}/l {extra}"))
    return Trainer(train_options(args), model_config(args, 4))


def test_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    """D has no batch norm, so K micro-batches of b give the gradients of one batch of K*b. G's batch
    norm normalises each micro-batch separately, so G's gradients differ (documented in trainer.py)."""
    big, small = _trainer(tmp_path, "--batch_size 8 --accum 1"), _trainer(tmp_path, "--batch_size 4 --accum 2")
    for m in big.D.modules():
        if isinstance(m, SelfAttention):
            m.gamma.data.fill_(0.5)  # so that the attention projections get gradients too
    small.D.load_state_dict(big.D.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    y = torch.randint(0, 4, (8,), generator=g)
    fake = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    y_fake = torch.randint(0, 4, (8,), generator=g)
    chunks = iter([(fake[:4], y_fake[:4]), (fake[4:], y_fake[4:])])
    big.fakes = lambda n: (fake, y_fake)
    small.fakes = lambda n: next(chunks)
    out_big = big.d_backward([(x, y)])
    out_small = small.d_backward([(x[:4], y[:4]), (x[4:], y[4:])])
    torch.testing.assert_close(out_small["loss/d"], out_big["loss/d"], atol=1e-6, rtol=1e-6)
    for (name, p_big), p_small in zip(big.D.named_parameters(), small.D.parameters()):
        assert p_big.grad is not None and p_big.grad.abs().sum() > 0, name
        scale = p_big.grad.abs().max().item()  # fp32 sums in another order: relative to the largest entry
        assert (p_small.grad - p_big.grad).abs().max().item() <= 1e-5 * scale, name
