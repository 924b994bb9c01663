"""Spectral normalisation: sigma -> 1 for every layer type, one power iteration per explicit step, none in eval."""

import pytest
import torch
from torch import nn

import spectral
from sagan_models import Discriminator, Generator, ModelConfig


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The normalised weight as a matrix with the output dimension first, reshaped independently of spectral.py."""
    w = layer.weight.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        w = w.transpose(0, 1)  # (in, out, k, k) -> (out, in, k, k)
    return w.reshape(w.shape[0], -1)


def _sigma_max(layer: nn.Module) -> float:
    return torch.linalg.matrix_norm(_matrix(layer), ord=2).item()


LAYERS = {
    "conv": lambda: nn.Conv2d(16, 32, 3, padding=1),
    "conv_transpose": lambda: nn.ConvTranspose2d(32, 16, 4, 2, 1),
    "linear": lambda: nn.Linear(40, 24),
    "embedding": lambda: nn.Embedding(10, 48),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_largest_singular_value_converges_to_one(kind: str) -> None:
    layer = spectral.spectral_norm(LAYERS[kind]())
    with torch.no_grad():
        spectral.original_weight(layer).mul_(7.0)  # far from 1 before normalisation
    assert spectral.original_weight(layer).requires_grad
    for _ in range(300):
        spectral.power_iteration(layer)
    assert abs(_sigma_max(layer) - 1.0) < 1e-3


def test_every_sn_layer_of_the_models_converges() -> None:
    cfg = ModelConfig(imsize=32, num_classes=5, g_conv_dim=8, d_conv_dim=8, cbn_sn=True)
    models = [Generator(cfg), Discriminator(ModelConfig(imsize=32, arch="dcgan", d_conv_dim=8, num_classes=5))]
    for model in models:
        layers = list(spectral.sn_layers(model))
        assert len(layers) > 5
        for _ in range(300):
            spectral.power_iteration(model)
        for layer, _ in layers:
            assert abs(_sigma_max(layer) - 1.0) < 1e-3, layer


def test_u_v_are_buffers_not_parameters() -> None:
    layer = spectral.spectral_norm(nn.Linear(8, 4))
    names = dict(layer.named_parameters())
    assert set(names) == {"bias", "parametrizations.weight.original"}
    assert {"parametrizations.weight.0._u", "parametrizations.weight.0._v"} <= set(layer.state_dict())


def test_one_iteration_per_step_not_per_forward() -> None:
    layer = spectral.spectral_norm(nn.Conv2d(4, 8, 3)).train()
    sn = layer.parametrizations.weight[0]
    u0 = sn._u.clone()
    for _ in range(3):
        layer(torch.randn(2, 4, 8, 8))  # training-mode forwards never move u
    assert torch.equal(sn._u, u0)
    assert spectral.power_iteration(layer) == 1
    u1 = sn._u.clone()
    expected = spectral.SpectralNorm(spectral.original_weight(layer).detach(), eps=sn.eps)
    expected._u.copy_(u0)
    expected.iterate(spectral.original_weight(layer))
    torch.testing.assert_close(u1, expected._u)  # exactly one iteration from u0


def test_u_does_not_change_in_eval_mode() -> None:
    model = Generator(ModelConfig(imsize=32, g_conv_dim=8, z_dim=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("._u", "._v"))}
    assert before
    with torch.no_grad():
        model(torch.randn(4, 16))
    assert spectral.power_iteration(model) == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_reach_the_raw_weight_and_sigma_is_constant_in_u() -> None:
    layer = spectral.spectral_norm(nn.Linear(6, 5))
    layer(torch.randn(3, 6)).sum().backward()
    assert spectral.original_weight(layer).grad is not None
    sn = layer.parametrizations.weight[0]
    assert not sn._u.requires_grad and not sn._v.requires_grad


def test_eps_is_configurable_and_reset_rewarms() -> None:
    layer = spectral.spectral_norm(nn.Linear(30, 20), eps=1e-6)
    sn = layer.parametrizations.weight[0]
    assert sn.eps == 1e-6
    with torch.no_grad():
        nn.init.orthogonal_(spectral.original_weight(layer)).mul_(3.0)
    spectral.reset(layer)  # after re-initialising weights, 15 warm-up iterations
    assert abs(sn.sigma(spectral.original_weight(layer)).item() - 3.0) < 1e-3


def test_no_spectral_norm_on_g_when_switched_off_but_always_on_d() -> None:
    cfg = ModelConfig(imsize=32, num_classes=3, g_conv_dim=8, d_conv_dim=8, g_sn=False)
    assert not list(spectral.sn_layers(Generator(cfg)))
    d = Discriminator(cfg)
    weighted = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(weighted) == len(list(spectral.sn_layers(d)))
    g = Generator(ModelConfig(imsize=32, num_classes=3, g_conv_dim=8))
    sn_ids = {id(m) for m, _ in spectral.sn_layers(g)}
    plain = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in sn_ids]
    assert not plain  # every conv and linear of G; CBN tables only with cbn_sn=True
