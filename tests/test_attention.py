"""SelfAttention against a per-pixel loop that applies the paper's equations and the span rule literally."""

import pytest
import torch

import sagan_models
from sagan_models import ModelConfig, SelfAttention


def _w(layer: torch.nn.Module) -> torch.Tensor:
    return layer.weight.detach()[:, :, 0, 0]  # (Cout, Cin), spectrally normalised


def _b(layer: torch.nn.Module, n: int) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else torch.zeros(n)


def _excluded_literal(qi: int, qj: int, key_pixels: list[tuple[int, int]], span: int) -> bool:
    """The span rule, stated literally: some pixel of the key lies within Chebyshev distance span."""
    return span > 0 and any(max(abs(qi - ki), abs(qj - kj)) <= span for ki, kj in key_pixels)


def naive_attention(attn: SelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel at a time: q_i = Wq x_i + b, k_j / v_j (max over each 2x2 cell when pooled),
    beta_ij = exp(q_i.k_j) / sum_j' exp(q_i.k_j') over admissible keys, o_i = Wo sum_j beta_ij v_j,
    y_i = x_i + gamma o_i. A query with no admissible key gets beta = 0."""
    b, c, h, w = x.shape
    wq, wk, wv = _w(attn.query), _w(attn.key), _w(attn.value)
    bq, bk, bv = _b(attn.query, wq.shape[0]), _b(attn.key, wk.shape[0]), _b(attn.value, wv.shape[0])
    step = 2 if attn.pooled else 1
    cells = [(a, bb) for a in range(0, h, step) for bb in range(0, w, step)]
    y = torch.empty_like(x)
    betas = torch.zeros(b, h * w, len(cells))
    for n in range(b):
        keys, vals, pix = [], [], []
        for a, bb in cells:
            members = [(a + di, bb + dj) for di in range(step) for dj in range(step)]
            keys.append(torch.stack([wk @ x[n, :, i, j] + bk for i, j in members]).max(0).values)
            vals.append(torch.stack([wv @ x[n, :, i, j] + bv for i, j in members]).max(0).values)
            pix.append(members)
        for i in range(h):
            for j in range(w):
                q = wq @ x[n, :, i, j] + bq
                allowed = [m for m in range(len(cells)) if not _excluded_literal(i, j, pix[m], attn.span)]
                o = torch.zeros(wv.shape[0])
                if allowed:
                    s = torch.stack([q @ keys[m] for m in allowed])
                    e = torch.exp(s - s.max())
                    for m, beta in zip(allowed, e / e.sum()):
                        betas[n, i * w + j, m] = beta
                        o = o + beta * vals[m]
                if attn.out is not None:
                    o = _w(attn.out) @ o
                y[n, :, i, j] = x[n, :, i, j] + attn.gamma.detach() * o
    return y, betas


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("span", [0, 1, 2, 3])
def test_matches_naive_loop(variant: str, span: int) -> None:
    attn = SelfAttention(16, variant=variant, span=span).eval()
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    x = torch.randn(2, 16, 8, 8)
    y, a = attn(x, return_attn=True)
    y_ref, a_ref = naive_attention(attn, x)
    torch.testing.assert_close(a, a_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_gamma_zero_is_identity(variant: str) -> None:
    attn = SelfAttention(32, variant=variant)
    x = torch.randn(3, 32, 8, 8)
    assert attn.gamma.item() == 0.0
    assert torch.equal(attn(x), x)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_softmax_over_keys(variant: str) -> None:
    attn = SelfAttention(16, variant=variant)
    x = torch.randn(2, 16, 8, 8)
    _, a = attn(x, return_attn=True)
    keys = 16 if variant == "official" else 64
    assert a.shape == (2, 64, keys)  # (B, N queries, M keys)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 64))
    assert not torch.allclose(a.sum(-2), torch.ones(2, keys))


def test_attention_map_only_on_request() -> None:
    attn = SelfAttention(16)
    out = attn(torch.randn(1, 16, 4, 4))
    assert isinstance(out, torch.Tensor)


def test_official_and_paper_layouts() -> None:
    off = SelfAttention(64, "official")
    assert [tuple(_w(m).shape) for m in (off.query, off.key, off.value, off.out)] == [(8, 64), (8, 64), (32, 64), (64, 32)]
    assert all(m.bias is None for m in (off.query, off.key, off.value, off.out))
    pap = SelfAttention(64, "paper")
    assert [tuple(_w(m).shape) for m in (pap.query, pap.key, pap.value)] == [(8, 64), (8, 64), (64, 64)]
    assert pap.out is None and all(m.bias is not None for m in (pap.query, pap.key, pap.value))
    assert off.gamma.shape == () and off.gamma.item() == 0.0


def test_pooled_cell_rule() -> None:
    """Official variant on 8x8, span 1: a cell is masked as soon as one of its four pixels is within the square."""
    excluded, full = sagan_models._span_mask(8, 8, 1, pooled=True)
    q = 3 * 8 + 3  # query (3, 3); square rows/cols 2..4 touches cells 1 and 2 in each direction
    masked_cells = {(m // 4, m % 4) for m in range(16) if excluded[q, m]}
    assert masked_cells == {(1, 1), (1, 2), (2, 1), (2, 2)}
    q = 0  # query (0, 0): square rows/cols 0..1 is exactly cell (0, 0)
    assert {(m // 4, m % 4) for m in range(16) if excluded[q, m]} == {(0, 0)}
    assert not full.any()


@pytest.mark.parametrize("variant,size,span", [("paper", 4, 2), ("official", 8, 3), ("official", 4, 1)])
def test_fully_masked_query_passes_through(variant: str, size: int, span: int) -> None:
    """A query with every key excluded gets a zero attention row and y = x there: no NaN, no average pooling."""
    attn = SelfAttention(16, variant=variant, span=span)
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    x = torch.randn(2, 16, size, size, requires_grad=True)
    y, a = attn(x, return_attn=True)
    _, full = sagan_models._span_mask(size, size, span, attn.pooled)
    assert full.any() and not full.all()
    assert torch.isfinite(y).all() and torch.isfinite(a).all()
    assert torch.equal(a[:, full], torch.zeros_like(a[:, full]))
    torch.testing.assert_close(a[:, ~full].sum(-1), torch.ones_like(a[:, ~full].sum(-1)))
    flat_y, flat_x = y.flatten(2), x.flatten(2)
    assert torch.equal(flat_y[:, :, full], flat_x[:, :, full])
    assert not torch.allclose(flat_y[:, :, ~full], flat_x[:, :, ~full])
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(attn.gamma.grad)


def test_span_masking_every_query_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="excludes every key of every query"):
        ModelConfig(imsize=32, arch="dcgan", attn_variant="paper", g_attn=(4,), d_attn=(), span=3).resolved()


def test_mask_built_once_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = sagan_models._span_mask
    monkeypatch.setattr(sagan_models, "_span_mask", lambda *a, **k: calls.append(a) or real(*a, **k))
    attn = SelfAttention(16, span=1)
    for _ in range(3):
        attn(torch.randn(2, 16, 8, 8))
    assert len(calls) == 1
    attn(torch.randn(2, 16, 4, 4))
    assert len(calls) == 2
