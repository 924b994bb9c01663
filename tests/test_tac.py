"""TAC-GAN's twin classifier (ModelConfig.d_tac, --d_tac; Gong et al., NeurIPS 2019, as StudioGAN's TACGAN): the
head's shape and validation, that D's loss fits it to the fakes' drawn labels, and that G plays against it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from checkpoints import CheckpointError, check_same_model
from parameter import get_parameters
from sagan_models import Discriminator, ModelConfig
from trainer import ac_loss
from test_aux_classifier import _cfg, _reals
from test_train import tiny_trainer


def test_twin_head_gives_its_own_logits_beside_the_same_outputs() -> None:
    torch.manual_seed(0)
    d = Discriminator(_cfg(d_ac=True, d_tac=True))
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0])
    out, cls, twin, h = d(x, y, return_cls=True, return_twin=True, return_features=True)
    assert out.shape == (5,) and cls.shape == (5, 4) and twin.shape == (5, 4) and h.shape[0] == 5
    assert torch.equal(out, d(x, y)) and torch.equal(cls, d(x, y, return_cls=True)[1])
    assert not torch.allclose(twin, cls)  # two heads, two sets of weights
    assert torch.equal(twin, d(x, y, return_twin=True)[1])


def test_twin_head_is_off_unless_asked_and_needs_the_first_head(capsys: pytest.CaptureFixture) -> None:
    assert ModelConfig().d_tac is False
    d = Discriminator(_cfg(d_ac=True))
    assert not any(k.startswith("twin.") for k in d.state_dict())
    with pytest.raises(ValueError, match="build D with d_tac"):
        d(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), return_twin=True)
    with pytest.raises(ValueError, match="set d_ac as well"):
        _cfg(d_tac=True).resolved()
    with pytest.raises(SystemExit):
        get_parameters(["--d_tac", "true"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "add --d_ac true or drop --d_tac" in err
    with pytest.raises(SystemExit):
        get_parameters(["--d_ac", "true", "--tac_weight", "0.3"])
    assert "add --d_tac true or drop --tac_weight" in capsys.readouterr().err


def test_d_fits_the_twin_to_the_fakes_drawn_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer("--d_ac", "true", "--d_tac", "true")
    t.d_loss_fn = lambda real, fake: (real.sum() + fake.sum()) * 0  # only the class terms move D
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    monkeypatch.setattr("trainer.ac_loss", lambda logits, y: seen.append((logits.detach(), y)) or ac_loss(logits, y))
    drawn: list[torch.Tensor] = []
    g_train = t.w.g_train
    monkeypatch.setattr(t.w, "g_train", lambda z, y: drawn.append(y) or g_train(z, y))
    reals = _reals()
    before = {k: v.clone() for k, v in t.D.named_parameters()}
    logs = t.d_step(reals)
    moved = {k for k, v in t.D.named_parameters() if not torch.equal(before[k], v)}
    (_, y_real), (twin_logits, y_fake) = seen  # the first head on real images, then the twin on the fakes
    assert torch.equal(y_real, reals[0][1]) and torch.equal(y_fake, drawn[0]) and twin_logits.shape == (8, 4)
    assert logs["loss/tac_d"].item() > 0
    assert {"twin.parametrizations.weight.original", "ac.parametrizations.weight.original"} <= moved
    assert not {k for k in moved if k.startswith("embed.") or k.startswith("head.")}


class _Blind(nn.Module):
    """A class head that sees nothing: constant logits, so its cross-entropy gives G no gradient."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, :4] * 0


def test_g_moves_away_from_what_the_twin_recognises() -> None:
    """With the adversarial loss and the first head silenced, G's only gradient is the twin's cross-entropy,
    subtracted: a few G steps raise it on fixed noise (they would lower it with the sign turned)."""
    torch.manual_seed(0)
    t = tiny_trainer("--d_ac", "true", "--d_tac", "true")
    t.g_loss_fn = lambda fake: fake.sum() * 0
    t.D.ac = _Blind()
    z, y = torch.randn(32, t.cfg.z_dim), torch.arange(32) % 4

    def twin_ce() -> float:
        with torch.no_grad():
            return ac_loss(t.D(t.G(z, y), y, return_twin=True)[1], y).item()

    start = twin_ce()
    logs = [t.g_step() for _ in range(5)]
    assert all(log["loss/tac_g"].item() > 0 for log in logs)
    assert twin_ce() > start + 1e-3


def test_a_checkpoint_with_the_twin_needs_the_flag(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="d_tac: checkpoint True vs now False"):
        check_same_model(_cfg(d_ac=True, d_tac=True).resolved().to_dict(), _cfg(d_ac=True).resolved(), tmp_path / "1.pt")
    old = _cfg(d_ac=True).resolved().to_dict()
    del old["d_tac"]  # a checkpoint written before the twin existed
    check_same_model(old, _cfg(d_ac=True).resolved(), tmp_path / "1.pt")


@pytest.mark.parametrize("weight,moves", [("0", False), ("0.3", True)])
def test_tac_weight_scales_both_twin_terms(weight: str, moves: bool) -> None:
    t = tiny_trainer("--d_ac", "true", "--d_tac", "true", "--ac_weight", "0", "--tac_weight", weight)
    t.d_loss_fn = lambda real, fake: (real.sum() + fake.sum()) * 0
    t.g_loss_fn = lambda fake: fake.sum() * 0
    d_before = {k: v.clone() for k, v in t.D.named_parameters()}
    g_before = {k: v.clone() for k, v in t.G.named_parameters()}
    t.d_step(_reals())
    d_moved = {k for k, v in t.D.named_parameters() if not torch.equal(d_before[k], v)}
    t.g_step()
    assert ("twin.parametrizations.weight.original" in d_moved) == moves
    assert "ac.parametrizations.weight.original" not in d_moved  # --ac_weight 0: the first head is still
    assert any(not torch.equal(g_before[k], v) for k, v in t.G.named_parameters()) == moves


def test_without_the_twin_no_term_is_logged() -> None:
    t = tiny_trainer("--d_ac", "true")
    assert "loss/tac_d" not in t.d_step(_reals()) and "loss/tac_g" not in t.g_step()
