"""Generator and discriminator: reference parameter counts, shapes for every layout, conditioning, errors."""

import json

import pytest
import torch
from torch import nn

import spectral
from sagan_models import (
    ARCHS,
    IMSIZES,
    CondBatchNorm2d,
    Discriminator,
    Generator,
    MinibatchStd,
    ModelConfig,
    SelfAttention,
    count_params,
    sample,
    standing_stats,
    truncate_latents,
)

# (config, G params, D params): StudioGAN's training logs and heykeetae's port.
PARITY = {
    "studiogan_cifar10_sagan": (ModelConfig(imsize=32, num_classes=10, g_attn=(16,), d_attn=(16,)), 4_386_308, 1_075_586),
    "studiogan_cifar10_sngan": (ModelConfig(imsize=32, num_classes=10, g_attn=(), d_attn=(), g_sn=False), 4_304_387, 1_055_105),
    "studiogan_imagenet_sagan": (ModelConfig(imsize=128, num_classes=1000, g_attn=(64,), d_attn=(64,)), 42_017_412, 39_448_258),
    "heykeetae_dcgan_64": (
        ModelConfig(imsize=64, arch="dcgan", attn_variant="paper", g_attn=(16, 32), d_attn=(8, 4)),
        3_832_885,
        3_175_299,
    ),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_parameter_counts_match_references(name: str) -> None:
    cfg, g_params, d_params = PARITY[name]
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "init": "pytorch"})  # init does not change counts; fastest
    assert count_params(Generator(cfg)) == g_params
    assert count_params(Discriminator(cfg)) == d_params


def _tiny(arch: str, imsize: int, num_classes: int, **kw) -> ModelConfig:
    return ModelConfig(imsize=imsize, arch=arch, num_classes=num_classes, g_conv_dim=8, d_conv_dim=8, z_dim=16, **kw)


@pytest.mark.parametrize("num_classes", [0, 7])
@pytest.mark.parametrize("imsize", IMSIZES)
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_finite(arch: str, imsize: int, num_classes: int) -> None:
    cfg = _tiny(arch, imsize, num_classes)
    g, d = Generator(cfg), Discriminator(cfg)
    z = torch.randn(2, 16)
    y = torch.tensor([0, num_classes - 1]) if num_classes else None
    x = g(z, y)
    assert x.shape == (2, 3, imsize, imsize)
    assert x.abs().max() <= 1
    logits = d(x, y)
    assert logits.shape == (2,)
    assert torch.isfinite(x).all() and torch.isfinite(logits).all()
    assert len([m for m in g.modules() if isinstance(m, SelfAttention)]) == len(g.cfg.g_attn) > 0
    assert len([m for m in d.modules() if isinstance(m, SelfAttention)]) == len(d.cfg.d_attn) > 0


def test_backward_reaches_every_parameter() -> None:
    cfg = _tiny("resnet", 32, 4, cbn_sn=True)
    g, d = Generator(cfg), Discriminator(cfg)
    for m in g.modules():
        if isinstance(m, SelfAttention):
            nn.init.constant_(m.gamma, 0.5)  # gamma = 0 would block the attention convs' gradients
    for m in d.modules():
        if isinstance(m, SelfAttention):
            nn.init.constant_(m.gamma, 0.5)
    y = torch.tensor([0, 1, 2, 3])
    d(g(torch.randn(4, 16), y), y).mean().backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_maps_on_request(arch: str) -> None:
    cfg = _tiny(arch, 32, 0, g_attn=(16,), d_attn=(8,))
    g, d = Generator(cfg), Discriminator(cfg)
    img, maps = g(torch.randn(3, 16), return_attn=True)
    assert [tuple(m.shape) for m in maps] == [(3, 256, 64)]  # 16x16 queries, 8x8 pooled keys
    _, dmaps = d(img, return_attn=True)
    assert [tuple(m.shape) for m in dmaps] == [(3, 64, 16)]
    assert isinstance(g(torch.randn(1, 16)), torch.Tensor)


def test_paper_variant_maps_are_unpooled() -> None:
    g = Generator(_tiny("dcgan", 32, 0, attn_variant="paper", g_attn=(8, 16)))
    _, maps = g(torch.randn(2, 16), return_attn=True)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 64), (2, 256, 256)]


@pytest.mark.parametrize("init", ["ortho", "xavier"])
def test_conditional_generator_depends_on_label(init: str) -> None:
    g = Generator(_tiny("resnet", 32, 10, init=init)).eval()
    if init == "xavier":  # official init: CBN gain 1, bias 0 for every class, so labels act only after training
        z = torch.randn(1, 16).repeat(2, 1)
        same = g(z, torch.tensor([1, 2]))
        assert torch.equal(same[0], same[1])
        with torch.no_grad():
            for m in g.modules():
                if isinstance(m, CondBatchNorm2d):
                    m.gain.weight.normal_(0, 0.3)
                    m.bias.weight.normal_(0, 0.3)
    z = torch.randn(1, 16).repeat(2, 1)
    out = g(z, torch.tensor([1, 2]))
    assert (out[0] - out[1]).abs().mean() > 1e-3


def test_projection_discriminator_depends_on_label() -> None:
    d = Discriminator(_tiny("resnet", 32, 10))
    x = torch.randn(1, 3, 32, 32).repeat(2, 1, 1, 1)
    out = d(x, torch.tensor([3, 4]))
    assert out[0] != out[1]


def test_unconditional_uses_plain_affine_bn() -> None:
    g = Generator(_tiny("resnet", 32, 0))
    cbns = [m for m in g.modules() if isinstance(m, CondBatchNorm2d)]
    assert cbns and all(m.bn.affine and not hasattr(m, "gain") for m in cbns)
    assert not hasattr(Discriminator(_tiny("resnet", 32, 0)), "embed")


def test_labels_required_when_conditional() -> None:
    g = Generator(_tiny("resnet", 32, 5))
    with pytest.raises(ValueError, match="class-conditional"):
        g(torch.randn(2, 16))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(imsize=48), "image size 48 is not supported; choose one of 32, 64, 128, 256"),
        (dict(imsize=32, g_attn=(4,)), "generator attention at 4x4 is impossible for resnet 32 px; valid feature resolutions: 8, 16, 32"),
        (dict(imsize=64, d_attn=(64,)), "discriminator attention at 64x64 is impossible for resnet 64 px; valid feature resolutions: 4, 8, 16, 32"),
        (dict(imsize=32, arch="dcgan", g_attn=(32,)), "valid feature resolutions: 4, 8, 16"),
        (dict(imsize=64, g_conv_dim=2), "attention at 32x32 needs a channel count divisible by 8, got 4"),
        (dict(arch="biggan"), "unknown architecture"),
        (dict(attn_variant="x"), "unknown attention variant"),
        (dict(init="normal"), "unknown init"),
        (dict(span=-1), "span must be >= 0"),
        (dict(sn_layers="port"), "use them with arch dcgan"),
        (dict(arch="dcgan", convt_sn_dim=2), "convt_sn_dim must be 1"),
        (dict(d_mbstd=1), "d_mbstd is a group size of at least 2"),
        (dict(arch="dcgan", d_mbstd=4), "use it with arch resnet"),
        (dict(num_classes=0, g_shared_dim=8), "use it with arch resnet and a labelled dataset"),
        (dict(arch="dcgan", num_classes=3, g_shared_dim=8), "use it with arch resnet and a labelled dataset"),
        (dict(num_classes=3, g_hier=True), "set g_shared_dim as well"),
        (dict(num_classes=3, g_shared_dim=8, cbn_sn=True), "drop one of the two"),
        (dict(imsize=128, num_classes=3, g_shared_dim=8, g_hier=True), "z_dim 128 is not divisible by 6"),
    ],
)
def test_impossible_configs_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Generator(ModelConfig(**kwargs))


def test_default_attention_per_size() -> None:
    got = {s: (ModelConfig(imsize=s).resolved().g_attn, ModelConfig(imsize=s).resolved().d_attn) for s in IMSIZES}
    assert got == {32: ((16,), (16,)), 64: ((32,), (32,)), 128: ((64,), (64,)), 256: ((64,), (64,))}
    assert ModelConfig(imsize=64, arch="dcgan").resolved().g_attn == (16, 32)
    assert ModelConfig(imsize=64, arch="dcgan").resolved().d_attn == (4, 8)


def test_attention_is_placed_after_the_named_block() -> None:
    g = Generator(_tiny("resnet", 64, 0, g_attn=(16,)))
    kinds = [type(b).__name__ for b in g.blocks]
    assert kinds == ["GBlock", "GBlock", "SelfAttention", "GBlock", "GBlock"]  # 8, 16, attn, 32, 64
    d = Discriminator(_tiny("resnet", 32, 0, d_attn=(8,)))
    assert [type(b).__name__ for b in d.blocks] == ["DBlock", "DBlock", "SelfAttention", "DBlock", "DBlock"]
    assert [b.shortcut is None for b in d.blocks if not isinstance(b, SelfAttention)] == [False, False, True, True]


def test_init_schemes() -> None:
    g = Generator(_tiny("resnet", 32, 5, init="xavier"))
    biases = [m.bias for m in g.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    tables = [t.weight for m in g.modules() if isinstance(m, CondBatchNorm2d) for t in (m.gain, m.bias)]
    assert all(torch.equal(t, torch.zeros_like(t)) for t in tables)
    g = Generator(_tiny("resnet", 32, 5, init="ortho"))
    w = spectral.original_weight(g.blocks[0].conv1).detach().flatten(1)  # (out, in*9), rows orthonormal
    torch.testing.assert_close(w @ w.t(), torch.eye(w.shape[0]), atol=1e-5, rtol=0)
    with torch.no_grad():
        assert torch.isfinite(Generator(_tiny("resnet", 32, 5, cbn_sn=True))(torch.randn(2, 16), torch.tensor([0, 1]))).all()


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = ModelConfig(imsize=32, g_attn=(8, 16), span=1).resolved()
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({"colour": 1})


def test_state_dict_round_trip_reproduces_outputs() -> None:
    cfg = _tiny("resnet", 32, 3, span=1)
    g1, g2 = Generator(cfg).eval(), Generator(cfg).eval()
    g2.load_state_dict(g1.state_dict())
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    assert torch.equal(g1(z, y), g2(z, y))


def test_port_sn_layout_normalises_only_the_up_and_down_convs() -> None:
    """heykeetae: SN on l1-l4 (our UpConv/DownConv convs) only; attention convs and output layers plain.
    The paper layout ("all") normalises every layer. Parameter counts are the same either way."""
    import spectral

    for sn_layers, plain_expected in (("port", True), ("all", False)):
        cfg = ModelConfig(imsize=64, arch="dcgan", attn_variant="paper", g_conv_dim=8, d_conv_dim=8, z_dim=16, sn_layers=sn_layers)
        G, D = Generator(cfg), Discriminator(cfg)
        for model, out in ((G, G.conv_out), (D, D.head)):
            convs = [b.conv for b in model.blocks if not isinstance(b, SelfAttention)]
            attn = [layer for b in model.blocks if isinstance(b, SelfAttention) for layer in (b.query, b.key, b.value)]
            assert all(spectral.is_normalised(c) for c in convs)
            assert all(spectral.is_normalised(layer) != plain_expected for layer in attn + [out])
        assert (count_params(G), count_params(D)) == (60_571, 51_059)


def test_convt_sn_dim_0_normalises_the_in_first_matrix() -> None:
    """convt_sn_dim 0: a ConvTranspose weight (in, out, k, k) is normalised as the (in, out*k*k) matrix (heykeetae)."""
    import spectral

    cfg = ModelConfig(imsize=32, arch="dcgan", g_conv_dim=8, d_conv_dim=8, z_dim=16, g_attn=(), d_attn=(), convt_sn_dim=0)
    G = Generator(cfg)
    layer = G.blocks[1].conv  # ConvTranspose2d(in 32, out 16, 4x4)
    sn = layer.parametrizations.weight[0]
    assert sn._u.shape == (32,) and sn._v.shape == (16 * 16,)
    for _ in range(300):
        spectral.power_iteration(G)
    w = layer.weight.detach()
    assert abs(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item() - 1) < 1e-3
    torch_convention = torch.linalg.matrix_norm(w.transpose(0, 1).reshape(w.shape[1], -1), ord=2).item()
    assert abs(torch_convention - 1) > 1e-2  # the two conventions have different largest singular values


def test_standing_stats_average_fresh_batches_and_leave_g_untouched() -> None:
    cfg = ModelConfig(imsize=32, g_conv_dim=8, d_conv_dim=8, num_classes=4)
    G = Generator(cfg)
    for m in G.modules():  # running statistics far from any batch's: what a stale EMA average looks like
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(9.0)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    S = standing_stats(G, batches=4, batch_size=16, seed=3)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # G itself untouched
    assert not S.training
    bns = [m for m in S.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.1 and int(m.num_batches_tracked) == 4 for m in bns)
    first = bns[0]
    # the first BN's statistics are the plain average of its inputs' batch statistics over the 4 passes
    seen = []
    hook = next(m for m in G.modules() if isinstance(m, nn.BatchNorm2d)).register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].detach().mean((0, 2, 3))))
    g = torch.Generator().manual_seed(3)
    G.train()
    with torch.no_grad():
        for _ in range(4):
            z = torch.randn(16, cfg.z_dim, generator=g)
            G(z, torch.randint(0, 4, (16,), generator=g))
    hook.remove()
    assert torch.allclose(first.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    z = torch.randn(4, cfg.z_dim)
    assert (sample(S, z, torch.arange(4)) - sample(G, z, torch.arange(4))).abs().max() > 0.1  # the stale statistics mattered


def test_minibatch_std_matches_a_loop_over_groups() -> None:
    x = torch.randn(8, 5, 3, 3)
    out = MinibatchStd(4)(x)  # groups {0, 2, 4, 6} and {1, 3, 5, 7}
    assert out.shape == (8, 6, 3, 3) and torch.equal(out[:, :5], x)
    for members in ([0, 2, 4, 6], [1, 3, 5, 7]):
        g = x[members]  # (4, C, H, W)
        want = ((g - g.mean(0)).square().mean(0) + 1e-8).sqrt().mean()
        for i in members:
            torch.testing.assert_close(out[i, 5], torch.full((3, 3), want.item()))
    same = MinibatchStd(4)(x[:1].expand(4, -1, -1, -1))  # four copies of one image: no spread
    torch.testing.assert_close(same[:, 5], torch.full((4, 3, 3), 1e-4))
    assert MinibatchStd(4)(x[:6]).shape == (6, 6, 3, 3)  # 6 images: groups of 3, the largest divisor below 4
    torch.testing.assert_close(MinibatchStd(4)(x[:1])[0, 5], torch.full((3, 3), 1e-4))  # one image: its own group


def test_minibatch_std_d_sees_its_group_only() -> None:
    cfg = _tiny("resnet", 32, 3, d_mbstd=2)
    d = Discriminator(cfg).eval()
    kinds = [type(b).__name__ for b in d.blocks]
    assert kinds == ["DBlock", "SelfAttention", "DBlock", "DBlock", "MinibatchStd", "DBlock"]  # before the last block
    assert d.blocks[-1].conv1.in_channels == d.blocks[-3].conv2.out_channels + 1
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])  # groups {0, 2} and {1, 3}
    x2 = x.clone()
    x2[2] = torch.randn(3, 32, 32)
    with torch.no_grad():
        a, b = d(x, y), d(x2, y)
    assert a[0] != b[0] and torch.equal(a[[1, 3]], b[[1, 3]])
    blocks = [type(b).__name__ for b in Discriminator(_tiny("resnet", 32, 3)).blocks]
    assert "MinibatchStd" not in blocks and ModelConfig().d_mbstd == 0  # off unless asked (and in older checkpoints)


def _cbn_inputs(g: Generator, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What G's head and each conditional BN's gain projection received in one forward pass."""
    seen: list[torch.Tensor] = []
    cbns = [m for m in g.modules() if isinstance(m, CondBatchNorm2d) and m.num_classes]
    hooks = [m.gain.register_forward_hook(lambda mod, inp, out: seen.append(inp[0])) for m in cbns]
    hooks.append(g.head.register_forward_hook(lambda mod, inp, out: seen.insert(0, inp[0])))
    with torch.no_grad():
        g(z, y)
    for h in hooks:
        h.remove()
    return seen[0], seen[1:]


def test_hierarchical_z_feeds_each_block_its_chunk_and_the_shared_embedding() -> None:
    g = Generator(_tiny("resnet", 32, 5, g_shared_dim=6, g_hier=True)).eval()
    z, y = torch.randn(3, 16), torch.tensor([4, 0, 4])
    head_in, cbn_in = _cbn_inputs(g, z, y)
    chunks = z.chunk(4, dim=1)  # 32 px: the head and three G blocks, 16 / 4 = 4 each
    assert torch.equal(head_in, chunks[0]) and g.head.in_features == 4
    assert len(cbn_in) == 6  # two CBNs per block
    e = g.shared(y)  # (3, 6)
    for i, x in enumerate(cbn_in):
        torch.testing.assert_close(x, torch.cat([e, chunks[1 + i // 2]], dim=1))  # both CBNs of block k: chunk k + 1
    assert torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])  # one vector per class
    assert not spectral.is_normalised(g.shared)  # BigGAN's G.shared has no SN
    gain = g.blocks[0].bn1.gain
    assert spectral.is_normalised(gain)
    assert spectral.original_weight(gain).shape == (32, 10) and gain.bias is None  # bias-free SN linear (C, shared + chunk)
    z2 = z.clone()
    z2[:, 12:] = torch.randn(3, 4)  # the last block's chunk only
    _, cbn2 = _cbn_inputs(g, z2, y)
    assert all(torch.equal(a, b) for a, b in zip(cbn_in[:4], cbn2[:4])) and not torch.equal(cbn_in[4], cbn2[4])


def test_shared_embedding_without_hier_gives_every_cbn_the_class_vector() -> None:
    g = Generator(_tiny("resnet", 32, 5, g_shared_dim=6)).eval()
    z, y = torch.randn(3, 16), torch.tensor([1, 2, 3])
    head_in, cbn_in = _cbn_inputs(g, z, y)
    assert torch.equal(head_in, z) and all(torch.equal(x, g.shared(y)) for x in cbn_in)
    plain = Generator(_tiny("resnet", 32, 5, g_shared_dim=6, g_sn=False))
    w = spectral.original_weight(plain.blocks[0].bn1.gain)
    assert not spectral.is_normalised(plain.blocks[0].bn1.gain) and not w.any()  # unnormalised: gain starts at 1 + 0
    assert ModelConfig().g_shared_dim == 0 and not ModelConfig().g_hier  # off unless asked (and in older checkpoints)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_truncated_latents_are_the_truncated_normal_and_keep_each_draw(t: float) -> None:
    from scipy import stats

    z = torch.randn(20_000, 8, generator=torch.Generator().manual_seed(0))
    x = truncate_latents(z, t)
    assert x.shape == z.shape and x.dtype == z.dtype and x.abs().max() <= t
    # the distribution: N(0, 1) restricted to [-t, t] (BigGAN's truncated normal), by its moments and a KS test
    ref = stats.truncnorm(-t, t)
    flat = x.flatten().double().numpy()
    assert abs(flat.std() - ref.std()) < 0.01 and abs(flat.mean()) < 0.01
    assert stats.kstest(flat, ref.cdf).pvalue > 0.01
    # one monotone map per coordinate: each draw keeps its rank, so samples pair up with and without truncation
    a, b = z[:-1].flatten(), z[1:].flatten()
    clear = (a - b).abs() > 1e-3
    assert torch.equal((x[:-1].flatten() > x[1:].flatten())[clear], (a > b)[clear])


def test_truncation_zero_is_off_and_negative_is_an_error() -> None:
    z = torch.randn(4, 8)
    assert truncate_latents(z, 0.0) is z
    with pytest.raises(ValueError, match="truncation must be >= 0"):
        truncate_latents(z, -1.0)
    G = Generator(ModelConfig(imsize=32, g_conv_dim=8, d_conv_dim=8, num_classes=4))
    plain = G.generate(6, seed=1)
    assert torch.equal(G.generate(6, seed=1, truncation=0.0), plain)
    assert not torch.equal(G.generate(6, seed=1, truncation=0.5), plain)
