"""Speed options: the fused attention backend equals the math reference; AMP, channels_last and
compile train and save checkpoints that load without them."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from main import main
from sagan_models import SelfAttention, set_attention_backend

TINY = shlex.split("--dataset shapes --imsize 32 --max_images 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 "
                   "--batch_size 4 --num_workers 0 --log_step 1 --sample_step 100 --model_save_step 100")


def _layer(variant: str, span: int, channels: int = 16) -> SelfAttention:
    torch.manual_seed(0)
    layer = SelfAttention(channels, variant, span)
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    return layer


def _run(layer: SelfAttention, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    layer.backend = backend
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    ((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() / y.numel() ** 0.5).backward()  # O(1) gradients
    grads = {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y.detach(), grads


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("span", [0, 1, 3])
def test_fused_backend_matches_math(variant: str, span: int) -> None:
    layer = _layer(variant, span)
    x = torch.randn(3, 16, 8, 8) * 2  # at span 3 on 8x8 (4x4 pooled keys) some queries are fully masked
    y_math, g_math = _run(layer, x, "math")
    y_sdpa, g_sdpa = _run(layer, x, "sdpa")
    assert torch.allclose(y_sdpa, y_math, atol=1e-5, rtol=0)
    for k in g_math:
        assert torch.allclose(g_sdpa[k], g_math[k], atol=1e-5, rtol=0), k
    assert (y_math - x).abs().max() > 1e-2  # attention contributes, so the comparison means something


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_bf16_autocast_is_finite_and_close(variant: str) -> None:
    layer = _layer(variant, span=1)
    x = torch.randn(2, 16, 8, 8)
    ref, _ = _run(layer, x, "math")
    for backend in ("sdpa", "math"):
        layer.backend = backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16 or backend == "math" or y.dtype == torch.float32
        assert torch.isfinite(y.float()).all()
        assert torch.allclose(y.float(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("span", [0, 1])
def test_cpu_fused_attention_runs_in_fp32_under_bf16_autocast(span: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU fused kernel is about 2x slower in bf16 (BENCHMARKS.md): under bf16 autocast it gets fp32 inputs
    (and an fp32 mask), and the layer still returns the autocast dtype, equal to the math path's result."""
    seen: list[tuple[torch.dtype, ...]] = []
    fused = F.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
        seen.append((q.dtype, k.dtype, v.dtype) + ((attn_mask.dtype,) if attn_mask is not None else ()))
        return fused(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    layer = _layer("official", span)
    x = torch.randn(2, 16, 8, 8).bfloat16()  # a block's output under autocast
    out = {}
    for backend in ("sdpa", "math"):
        layer.backend = backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[backend] = layer(x)
    assert seen and all(d == torch.float32 for dtypes in seen for d in dtypes), seen
    assert out["sdpa"].dtype == out["math"].dtype == torch.bfloat16
    assert torch.allclose(out["sdpa"].float(), out["math"].float(), atol=2e-2, rtol=0)
    assert (out["sdpa"].float() - x.float()).abs().max() > 0.1  # attention contributes


def test_set_attention_backend_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="sdpa"):
        set_attention_backend(_layer("official", 0), "flash")


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two threads, as a run on a 2-core machine has (an xdist worker has one: tests/conftest.py). With one,
    torch 2.14.1's inductor on an AVX-512/AMX Xeon turns G's attention gamma to NaN under bf16 autocast in
    the first compiled step (docs/training.md, "Speed"): a torch failure, which the trainer reports."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_cpu_speed_option_trains_and_checkpoint_loads_without_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture,
                                                                          two_threads: None) -> None:
    monkeypatch.chdir(tmp_path)
    fast = ["--amp", "bf16", "--channels_last", "true", "--compile", "true", "--attn_backend", "sdpa"]
    assert main(TINY + ["--total_step", "2", "--version", "fast"] + fast) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2 and "nan" not in " ".join(lines).lower() and "inf " not in " ".join(lines).lower()
    ckpt = torch.load(tmp_path / "models" / "fast" / "2.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["G"])  # the eager module's names
    assert main(TINY + ["--train", "false", "--version", "fast"]) == 0  # sample without compile or AMP
    assert main(TINY + ["--total_step", "3", "--version", "fast", "--pretrained_model", "latest"]) == 0
    assert "step 3/3" in capsys.readouterr().out


@pytest.mark.parametrize("units", [None, "AVX512-BF16"])
def test_bf16_on_a_cpu_without_bf16_units_says_so(units: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    import main as main_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(main_module, "cpu_bf16_units", lambda: units)
    assert main(TINY + ["--total_step", "1", "--version", "b", "--amp", "bf16", "--device", "cpu"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if "no bf16 instructions" in ln]
    assert len(notes) == (1 if units is None else 0), notes
    assert not notes or "--amp bf16 is emulated and slower than --amp off" in notes[0]


def test_cpu_bf16_units_names_what_torch_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import cpu_bf16_units

    for amx, avx, want in ((True, True, "AMX"), (False, True, "AVX512-BF16"), (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx, raising=False)
        assert cpu_bf16_units() == want


def test_wgan_gp_runs_with_the_fused_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WGAN-GP needs a double backward through D, which the fused kernels lack: D falls back to math."""
    monkeypatch.chdir(tmp_path)
    assert main(TINY + ["--total_step", "1", "--version", "gp", "--adv_loss", "wgan-gp"]) == 0


def test_bench_compares_variants_and_counts_flops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    import bench

    base = shlex.split("--imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --device cpu")
    f2 = bench.count_flops(base + ["--batch_size", "2"], 0)
    f4 = bench.count_flops(base + ["--batch_size", "4"], 0)
    assert f2 > 0 and abs(f4 / f2 - 2) < 0.05  # counted FLOPs scale with the batch
    assert bench.flops_at_batch(base, 0, 8) == bench.count_flops(base + ["--batch_size", "8"], 0)  # extrapolated exactly
    out = tmp_path / "b.json"
    assert bench.main(base + ["--batch_size", "2", "--iters", "2", "--warmup", "1", "--json", str(out),
                              "--compare", "math:--attn_backend math|fused:--attn_backend sdpa --channels_last true"]) == 0
    text = capsys.readouterr().out
    assert "model FLOPs per iteration are counted once per model" in text and "dense float32 matmul" in text
    assert "math" in text and "fused" in text and "time ratio" in text and "of matmul" in text
    res = json.loads(out.read_text())
    assert [r["name"] for r in res["results"]] == ["math", "fused"]
    for r in res["results"]:
        assert len(r["times"]) == 2 and r["s_per_iter"] > 0 and r["peak_bytes"] > 0 and 0 < r["matmul_fraction"]
    assert all(r["flops"] == f2 for r in res["results"])  # same model: same counted work
    argv = base + ["--iters", "1", "--compare", "base:|hier:--g_shared_dim 8 --g_hier true"]
    assert bench.main(argv) == 2  # a conditional-only option on the default unconditional bench model
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: variant 'hier' with --num_classes_bench 0: g_shared_dim embeds class labels")
    assert "\n" not in err and "Traceback" not in err
    assert bench.main(base + ["--batch_size", "2", "--iters", "1", "--warmup", "0", "--num_classes_bench", "3", "--json", str(out),
                              "--compare", "hier:--g_shared_dim 8 --g_hier true|wide:--g_conv_dim 16"]) == 0
    hier_r, wide_r = json.loads(out.read_text())["results"]
    assert wide_r["flops"] > 2 * hier_r["flops"]  # another model is counted again, not given the first one's count


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("span", [0, 1])
def test_fused_kernel_is_used_in_training(variant: str, span: int) -> None:
    """The sdpa backend must reach the fused CPU kernel (no softmax over an N x M matrix), not the
    math fallback that SDPA silently takes for, e.g., non-unit last strides."""
    from torch.profiler import profile

    layer = _layer(variant, span)
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    with profile() as prof:
        layer(x).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_softmax" not in ops and "aten::_safe_softmax" not in ops


def test_bench_loader_tools_time_every_decode_path_and_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from PIL import Image

    import bench

    jpegs = tmp_path / "jpegs"
    assert bench.main(["--make_jpegs", str(jpegs), "--n", "6"]) == 0
    sizes = [Image.open(f).size for f in sorted(jpegs.glob("*.jpg"))]
    assert len(sizes) == 6 and all(350 <= max(s) <= 500 for s in sizes) and len({round(w / h, 2) for w, h in sizes}) >= 3
    capsys.readouterr()
    assert bench.main(["--loader", str(jpegs), "--imsize", "64", "--batch_size", "2", "--num_workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "reduced-size JPEG decode, 0 workers, batch 2: 16 images in" in out and "ms per image per core" in out  # batch 1 not timed
    assert "reduced-size decode vs full decode at 64 px over 6 images: median PSNR" in out
    assert bench.main(["--loader", str(jpegs), "--imsize", "64", "--batch_size", "2", "--num_workers", "0",
                       "--data_cache", str(tmp_path / "cache")]) == 0
    assert "the decoded-image cache, 0 workers, batch 2: 16 images in" in capsys.readouterr().out and len(list((tmp_path / "cache").glob("folder-64px-reduced-*.npy"))) == 1
    # With workers, the batches they may hold in flight (1 x 4) and one more are drained before the clock starts,
    # then eight times that many are timed, epoch after epoch over the 6 images: what was made ahead is not timed.
    r = bench.loader_speed(["--dataset", "folder", "--data_dir", str(jpegs), "--imsize", "64", "--batch_size", "2",
                            "--num_workers", "1"])
    assert (r["workers"], r["batches"], r["images"]) == (1, 32, 64) and r["cpu_ms_per_image"] > 0
    rows_json = tmp_path / "paths.json"
    assert bench.main(["--decode_paths", str(jpegs), "--n", "4", "--imsize", "64", "--json", str(rows_json)]) == 0
    rows = json.loads(rows_json.read_text())
    assert [r["path"] for r in rows] == ["previous path", "full decode, SquareResize", "reduced-size decode", "decoded-image cache"]
    assert rows[0]["ratio"] == 1.0 and all(r["ms_per_image"] > 0 and r["images"] == 4 for r in rows)
    assert rows[3]["ms_per_image"] < rows[1]["ms_per_image"] and rows[3]["build_s"] > 0  # reading beats decoding


def test_a_packed_d_is_counted_and_timed_at_the_bench_batch(tmp_path: Path) -> None:
    """Packs (and MSGAN's halves) rule out the batch-2 FLOP count; the count is made at the bench's batch."""
    import bench

    base = shlex.split("--imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --device cpu --d_pack 2 --ms_weight 1")
    assert bench.flops_at_batch(base, 0, 4) == bench.count_flops(base + ["--batch_size", "4"], 0) > 0
    out = tmp_path / "p.json"
    assert bench.main(base + ["--batch_size", "4", "--iters", "1", "--warmup", "0", "--json", str(out),
                              "--compare", "plain:--d_pack 1|packed:"]) == 0
    assert out.is_file()
