"""MSGAN's mode-seeking term (trainer.mode_seeking, --ms_weight; Mao et al., CVPR 2019, Eq. 3): its value, the
direction of its gradient, how the Trainer's G update draws its pairs and adds it to G's loss, and --ms_space d,
which measures the pair's distance in D's pooled features instead of pixels."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import trainer as trainer_module
from trainer import Trainer, mode_seeking, unit_rms
from test_train import tiny_trainer


def test_value_is_latent_distance_over_image_distance() -> None:
    z = torch.cat([torch.zeros(3, 16), torch.ones(3, 16)])  # mean |z1 - z2| = 1
    fake = torch.cat([torch.zeros(3, 1, 4, 4), torch.full((3, 1, 4, 4), 0.5)])  # mean |f1 - f2| = 0.5
    assert mode_seeking(fake, z).item() == pytest.approx(1 / (0.5 + 1e-5))
    same = torch.cat([fake[:3], fake[:3]])
    assert mode_seeking(same, z).item() == pytest.approx(1e5)  # one image for two latents: the largest penalty


def test_descending_it_pulls_the_pair_apart() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    fake = (torch.randn(8, 1, 4, 4) * 0.1).requires_grad_(True)
    before = (fake[:4] - fake[4:]).abs().mean().item()
    mode_seeking(fake, z).backward()
    with torch.no_grad():
        moved = fake - 0.01 * fake.grad
    after = (moved[:4] - moved[4:]).abs().mean().item()
    assert after > before


def _trainer(ms_weight: str, space: str = "image") -> Trainer:
    return tiny_trainer("--ms_weight", ms_weight, "--ms_space", space)


def test_g_update_draws_pairs_with_one_label_and_two_latents(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trainer("1")
    seen: list[tuple[Tensor, Tensor]] = []
    g_train = t.w.g_train

    def spy(z: Tensor, y: Tensor) -> Tensor:
        seen.append((z.detach().clone(), y.clone()))
        return g_train(z, y)

    monkeypatch.setattr(t.w, "g_train", spy)
    logs = t.g_step()
    (z, y), = seen
    assert z.shape == (8, 16) and torch.equal(y[:4], y[4:])
    assert not torch.isclose(z[:4], z[4:]).any()
    assert logs["loss/ms"].item() > 0 and "loss/g" in logs


@pytest.mark.parametrize("ms_weight,moves", [("0", False), ("1", True)])
def test_the_term_alone_moves_g(ms_weight: str, moves: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trainer(ms_weight)
    t.g_loss_fn = lambda d_out: d_out.sum() * 0  # no adversarial gradient: only the mode-seeking term can move G
    before = {k: v.clone() for k, v in t.G.state_dict().items() if v.is_floating_point()}
    called: list[int] = []
    monkeypatch.setattr(trainer_module, "mode_seeking", lambda f, z: called.append(1) or mode_seeking(f, z))
    logs = t.g_step()
    changed = any(not torch.equal(before[k], v) for k, v in t.G.named_parameters())
    assert changed == moves and bool(called) == moves and ("loss/ms" in logs) == moves


def test_unit_rms_scales_a_batch_to_rms_one_and_passes_gradient_through_directions_only() -> None:
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)  # RMS sqrt(25 / 4) = 2.5
    out = unit_rms(h)
    assert torch.allclose(out, torch.tensor([[1.2, 1.6], [0.0, 0.0]]))
    assert out.pow(2).mean().item() == pytest.approx(1.0)
    out.sum().backward()
    assert torch.allclose(h.grad, torch.full((2, 2), 1 / 2.5))  # the scale is a constant: no gradient through it
    assert torch.allclose(unit_rms(torch.randn(6, 5) * 1e3).pow(2).mean(), torch.tensor(1.0))


def test_in_d_space_the_term_is_computed_on_ds_pooled_features_of_the_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trainer("1", "d")
    t.g_loss_fn = lambda d_out: d_out.sum() * 0  # only the mode-seeking term moves G
    seen: list[tuple[Tensor, Tensor]] = []
    monkeypatch.setattr(trainer_module, "mode_seeking",
                        lambda f, z: seen.append((f.detach().clone(), z.detach().clone())) or mode_seeking(f, z))
    before = {k: v.clone() for k, v in t.G.named_parameters()}
    logs = t.g_step()
    ((feats, z),) = seen
    width = t.D.embed.weight.shape[1]  # D's pooled features feed its projection embedding
    assert feats.shape == (8, width)  # (B, C), not the (B, 3, 32, 32) images
    assert feats.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)  # unit RMS
    assert logs["loss/ms"].item() == pytest.approx(mode_seeking(feats, z).item())
    assert any(not torch.equal(before[k], v) for k, v in t.G.named_parameters())  # the gradient reaches G through D
    assert all(p.grad is None or not p.grad.abs().sum() for p in t.D.parameters())  # D stays frozen in G's update


def test_d_returns_its_pooled_features_after_the_class_logits_and_they_give_the_logit() -> None:
    t = _trainer("1", "d")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logit, h = t.D(x, y, return_features=True)
        assert torch.allclose(logit, t.D(x, y))
        assert torch.allclose(logit, t.D.head(h).squeeze(1) + (t.D.embed(y) * h).sum(1), atol=1e-5)
