"""The GPU check (`pytest -m gpu`, skipped without CUDA): what only a GPU can show, in a few minutes on one
H100/H200. BENCHMARKS.md ("GPU") gives the one command that runs it with the trimmed benchmark.

- 30 steps of the 64 px ResNet with bf16, channels_last and compile, with a bound on recompiles;
- fp16 (gradient scaler) with n_dis 2 and accumulation 2, then an exact resume;
- compile with WGAN-GP (the penalty runs on the eager D);
- the attention kernels at fp32/bf16 and span 0/1: a fused (flash or memory-efficient) kernel and no
  softmax kernel over a materialised N x N score matrix;
- a GPU checkpoint loaded on the CPU and back, and a resume from a checkpoint saved on 8 GPUs;
- torchrun with one process on NCCL.
It needs neither torch-fidelity nor lmdb: every run uses the built-in `shapes` data and no evaluation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from main import main

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GPU = shlex.split("--dataset shapes --max_images 2048 --device cuda --log_step 10 --sample_step 1000 --attn_samples 0 "
                  "--use_tensorboard false --num_workers 2 --model_save_step 1000")
R64 = GPU + shlex.split("--imsize 64 --arch resnet --g_conv_dim 32 --d_conv_dim 32 --batch_size 64 --num_classes -1")


def test_bf16_channels_last_compile_30_steps_with_few_recompiles(workdir: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert main(R64 + shlex.split("--version c --total_step 30 --amp bf16 --channels_last true --compile true")) == 0
    frames = torch._dynamo.utils.counters["frames"]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # G and D in training mode, D in the G step (no grad for D), possibly one graph break each: a recompile
    # per step would show up as ~30 here
    assert graphs <= 12, dict(frames)
    assert (workdir / "models/c/30.pt").is_file()
    assert torch.backends.cudnn.benchmark  # fixed shapes: CUDA training turns the algorithm search on


def test_fp16_ndis2_accum2_then_an_exact_resume(workdir: Path) -> None:
    flags = R64 + shlex.split("--amp fp16 --n_dis 2 --accum 2 --batch_size 16 --model_save_step 3")
    assert main(flags + ["--version", "a", "--total_step", "6"]) == 0
    assert main(flags + ["--version", "b", "--total_step", "3"]) == 0
    assert main(flags + ["--version", "b", "--total_step", "6", "--pretrained_model", "latest"]) == 0
    a, b = (torch.load(workdir / f"models/{v}/6.pt", weights_only=True) for v in ("a", "b"))
    assert a["scaler"]["scale"] > 0 and a["scaler"] == b["scaler"]
    for part in ("G", "D"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_compile_with_wgan_gp(workdir: Path) -> None:
    assert main(R64 + shlex.split("--version gp --total_step 5 --compile true --adv_loss wgan-gp --batch_size 16")) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("span", [0, 1])
def test_attention_runs_a_fused_kernel(dtype: torch.dtype, span: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from sagan_models import SelfAttention

    layer = SelfAttention(256, span=span).cuda()
    x = torch.randn(32, 256, 32, 32, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        layer(x).sum().backward()  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            layer(x).sum().backward()
            torch.cuda.synchronize()
    names = [e.key.lower() for e in prof.key_averages()]
    fused = [n for n in names if any(k in n for k in ("flash", "efficient", "fmha", "cutlass", "attention"))]
    assert fused, names
    assert not [n for n in names if "softmax" in n], names  # no N x N score matrix was materialised


def test_a_gpu_checkpoint_loads_on_the_cpu_and_back(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = shlex.split("--imsize 32 --g_conv_dim 16 --d_conv_dim 16 --batch_size 16 --num_classes -1")
    assert main(GPU + tiny + ["--version", "x", "--total_step", "2"]) == 0
    cpu = [a if a != "cuda" else "cpu" for a in GPU]
    capsys.readouterr()
    assert main(cpu + tiny + ["--version", "x", "--total_step", "3", "--pretrained_model", "latest", "--num_workers", "0"]) == 0
    assert "saved by 1 process(es) on cuda, resumed by 1 on cpu" in capsys.readouterr().out
    assert main(GPU + tiny + ["--version", "x", "--total_step", "4", "--pretrained_model", "latest"]) == 0
    assert "saved by 1 process(es) on cpu, resumed by 1 on cuda" in capsys.readouterr().out
    assert main(cpu + tiny + ["--version", "x", "--train", "false", "--pretrained_model", "4"]) == 0


def test_a_checkpoint_from_eight_gpus_resumes_on_one(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = shlex.split("--imsize 32 --g_conv_dim 16 --d_conv_dim 16 --batch_size 16")
    assert main(GPU + tiny + ["--version", "e", "--total_step", "2"]) == 0
    path = workdir / "models/e/2.pt"
    ckpt = torch.load(path, weights_only=True)
    for state in (ckpt["rng"], *ckpt["rng_ranks"]):  # as older code wrote it: every visible GPU's generator
        state.pop("device")
        state["cuda"] = [state["cuda"][0]] * 8
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(GPU + tiny + ["--version", "e", "--total_step", "3", "--pretrained_model", "latest"]) == 0


def test_torchrun_one_process_on_nccl(workdir: Path) -> None:
    tiny = shlex.split("--imsize 32 --g_conv_dim 16 --d_conv_dim 16 --batch_size 16 --total_step 3 --version t")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          str(ROOT / "main.py"), *GPU, *tiny], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 3/3" in run.stdout and (workdir / "models/t/3.pt").is_file()
