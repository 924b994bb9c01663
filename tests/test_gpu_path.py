"""The GPU code paths that a CPU can show: compile with WGAN-GP, precision under autocast, and resuming
a checkpoint saved on other devices. The checks that need CUDA are in tests/test_gpu.py."""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from main import main
from sagan_models import CondBatchNorm2d, Generator, ModelConfig, SelfAttention, set_attention_backend

TINY = shlex.split("--dataset shapes --max_images 64 --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 8 "
                   "--device cpu --log_step 1 --sample_step 1000 --attn_samples 0 --use_tensorboard false --num_workers 0")


def test_compile_with_wgan_gp_runs_the_penalty_on_the_eager_d(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AOTAutograd (every compile backend but 'eager') has no double backward: the penalty must not go through
    the compiled D. aot_eager shows it on the CPU without a C++ compiler."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    assert main(TINY + ["--version", "gp", "--total_step", "2", "--compile", "true", "--adv_loss", "wgan-gp"]) == 0
    assert (workdir / "models/gp/2.pt").is_file()


@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_batch_norm_output_has_the_autocast_dtype(num_classes: int) -> None:
    G = Generator(ModelConfig(imsize=32, g_conv_dim=8, d_conv_dim=8, z_dim=16, num_classes=num_classes))
    dtypes: list[tuple[str, torch.dtype]] = []
    for name, m in G.named_modules():
        if isinstance(m, CondBatchNorm2d) or (isinstance(m, nn.BatchNorm2d) and "bn_out" in name):
            m.register_forward_hook(lambda mod, inp, out, name=name: dtypes.append((name, out.dtype)))
    y = torch.arange(4) % num_classes if num_classes else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        G(torch.randn(4, 16), y)
    assert dtypes and all(d == torch.bfloat16 for _, d in dtypes), [n for n, d in dtypes if d != torch.bfloat16]


def test_math_attention_in_fp16_survives_large_activations() -> None:
    """fp16 QK^T of large activations overflows to inf and the softmax gives NaN; the scores are fp32."""
    torch.manual_seed(0)
    layer = SelfAttention(64, sn=False)
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    set_attention_backend(layer, "math")
    x = torch.randn(2, 64, 8, 8) * 300
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        energy_fp16 = torch.bmm(layer.query(x).flatten(2).transpose(1, 2), layer.key(x).flatten(2))
        y, attn = layer(x, return_attn=True)
    assert not torch.isfinite(energy_fp16).all()  # what fp16 scores would have been
    assert torch.isfinite(y).all() and torch.isfinite(attn).all() and attn.dtype == torch.float32
    assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-4)


def test_a_checkpoint_saved_on_other_gpus_resumes_on_the_cpu_with_a_note(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(TINY + ["--version", "r", "--total_step", "2"]) == 0
    path = workdir / "models/r/2.pt"
    ckpt = torch.load(path, weights_only=True)
    # as an 8-GPU single-process run of older code wrote it: every visible GPU's state, no device kind
    for state in (ckpt["rng"], *ckpt["rng_ranks"]):
        state.pop("device")
        state["cuda"] = [torch.zeros(16, dtype=torch.uint8) for _ in range(8)]
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(TINY + ["--version", "r", "--total_step", "3", "--pretrained_model", "latest"]) == 0
    out = capsys.readouterr().out
    assert "was saved by 1 process(es) on cuda, resumed by 1 on cpu: training resumes, but its random stream is not restored bit for bit" in out
    assert (workdir / "models/r/3.pt").is_file()
    saved = torch.load(workdir / "models/r/3.pt", weights_only=True)["rng"]
    assert saved["device"] == "cpu" and saved["cuda"] == []


def test_amp_with_data_parallel_is_refused_in_one_line(capsys: pytest.CaptureFixture) -> None:
    """DataParallel's replica threads would turn autocast on with CUDA's default dtype (fp16) and no scaler."""
    from parameter import get_parameters

    with pytest.raises(SystemExit) as e:
        get_parameters(["--parallel", "true", "--amp", "bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "--amp bf16 with --parallel" in err[-1] and "torchrun --nproc_per_node" in err[-1]
    assert get_parameters(["--parallel", "true"]).amp == "off"


def test_inception_runs_with_tf32_off_and_the_reference_cache_key_names_device_and_precision(tmp_path: Path) -> None:
    import fakedata
    from data_loader import Shapes
    from metrics import Inception, reference_stats

    net = Inception(fakedata.inception_weights(tmp_path / "inception.pth"), torch.device("cpu"))
    seen = []
    net.net.register_forward_hook(lambda *a: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # what --tf32 true sets for training
    try:
        net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    assert seen == [(False, False)] and after == (True, True)  # off inside the forward, restored after
    stats = reference_stats(Shapes(32, size=8), "shapes", 32, net, tmp_path / "cache", 0)
    assert stats["meta"]["device"] == "cpu" and stats["meta"]["precision"] == "fp32, TF32 off"
