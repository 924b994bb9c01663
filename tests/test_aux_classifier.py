"""D's auxiliary classifier head (ModelConfig.d_ac, --d_ac, --ac_weight, --ac_g_weight; ACGAN, Odena et al. 2017): its
shape and validation, that it leaves the logit untouched, that it learns real classes, and how each update adds its
term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checkpoints import CheckpointError, check_same_model
from sagan_models import Discriminator, ModelConfig
from trainer import Trainer, ac_loss
from test_train import tiny_trainer


def _cfg(**kw: object) -> ModelConfig:
    return ModelConfig(imsize=32, z_dim=16, g_conv_dim=8, d_conv_dim=8, num_classes=4, **kw)


def test_head_gives_class_logits_beside_the_same_logit() -> None:
    torch.manual_seed(0)
    d = Discriminator(_cfg(d_ac=True))
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0])
    out, cls = d(x, y, return_cls=True)
    assert out.shape == (5,) and cls.shape == (5, 4)
    assert torch.equal(out, d(x, y))  # asking for the classes does not change D's logit
    out2, cls2, maps = d(x, y, return_cls=True, return_attn=True)
    assert torch.equal(out2, out) and torch.equal(cls2, cls) and len(maps) == 1


def test_head_is_off_unless_asked() -> None:
    assert ModelConfig().d_ac is False  # and older checkpoints, whose configs lack the key, load without it
    d = Discriminator(_cfg())
    assert not any(k.startswith("ac.") for k in d.state_dict())
    with pytest.raises(ValueError, match="build D with d_ac"):
        d(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), return_cls=True)
    with pytest.raises(ValueError, match="use it with a labelled dataset"):
        ModelConfig(imsize=32, d_ac=True).resolved()


def test_loss_is_cross_entropy() -> None:
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    expected = (-F.log_softmax(logits, 1)[0, 0] - F.log_softmax(logits, 1)[1, 1]) / 2
    assert ac_loss(logits, y).item() == pytest.approx(expected.item())
    assert ac_loss(logits.half(), y).dtype == torch.float32


def test_head_learns_real_classes() -> None:
    """Trained with its cross-entropy alone, the head separates four classes of distinct images (chance: 25%)."""
    torch.manual_seed(0)
    d = Discriminator(_cfg(d_ac=True))
    means = torch.linspace(-0.9, 0.9, 4)  # class k: flat images of brightness means[k] plus noise
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,))
        return means[y].view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 3, 32, 32), y

    for _ in range(60):
        x, y = batch(16)
        opt.zero_grad()
        ac_loss(d(x, y, return_cls=True)[1], y).backward()
        opt.step()
    x, y = batch(200)
    with torch.no_grad():
        acc = (d(x, y, return_cls=True)[1].argmax(1) == y).float().mean().item()
    assert acc > 0.9


def _reals(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.rand(n, 3, 32, 32) * 2 - 1, torch.randint(0, 4, (n,)))]


def _class_term_steps(*flags: str) -> tuple[Trainer, dict, set[str], dict, bool]:
    """One D and one G update of a tiny trainer with D's head and no adversarial gradient, so only the class
    terms move anything: the trainer, D's logs, the names of D's parameters that moved, G's logs, and whether G
    moved."""
    t = tiny_trainer("--d_ac", "true", *flags)
    t.d_loss_fn = lambda real, fake: (real.sum() + fake.sum()) * 0
    t.g_loss_fn = lambda fake: fake.sum() * 0
    d_before = {k: v.clone() for k, v in t.D.named_parameters()}
    g_before = {k: v.clone() for k, v in t.G.named_parameters()}
    d_logs = t.d_step(_reals())
    d_moved = {k for k, v in t.D.named_parameters() if not torch.equal(d_before[k], v)}
    g_logs = t.g_step()
    return t, d_logs, d_moved, g_logs, any(not torch.equal(g_before[k], v) for k, v in t.G.named_parameters())


@pytest.mark.parametrize("weight,moves", [("0", False), ("1", True)])
def test_the_term_alone_moves_d_and_g(weight: str, moves: bool) -> None:
    _, d_logs, d_moved, g_logs, g_moved = _class_term_steps("--ac_weight", weight)
    assert d_logs["loss/ac_d"].item() > 0 and g_logs["loss/ac_g"].item() > 0
    assert bool(d_moved) == moves and ("ac.parametrizations.weight.original" in d_moved) == moves
    assert not {k for k in d_moved if k.startswith("embed.") or k.startswith("head.")}  # the logit's own layers: no gradient
    assert g_moved == moves


@pytest.mark.parametrize("d_weight,g_weight", [("1", "0"), ("0", "1")])
def test_g_weight_moves_g_alone_and_ac_weight_d_alone(d_weight: str, g_weight: str) -> None:
    """--ac_g_weight weighs the term in G's loss only; --ac_weight then weighs it in D's only."""
    t, _, d_moved, _, g_moved = _class_term_steps("--ac_weight", d_weight, "--ac_g_weight", g_weight)
    assert (t.opts.ac_weight, t.opts.ac_g_weight) == (float(d_weight), float(g_weight))
    assert (bool(d_moved), g_moved) == (d_weight == "1", g_weight == "1")


def test_g_weight_defaults_to_ac_weight() -> None:
    assert tiny_trainer("--d_ac", "true", "--ac_weight", "0.3").opts.ac_g_weight == 0.3


def test_g_term_scores_fakes_against_their_drawn_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer("--d_ac", "true")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_loss = ac_loss

    def spy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append((logits.detach(), y))
        return real_loss(logits, y)

    monkeypatch.setattr("trainer.ac_loss", spy)
    drawn: list[torch.Tensor] = []
    g_train = t.w.g_train
    monkeypatch.setattr(t.w, "g_train", lambda z, y: drawn.append(y) or g_train(z, y))
    t.g_step()
    (logits, y), = seen
    assert logits.shape == (8, 4) and torch.equal(y, drawn[0])


def test_without_the_head_no_term_is_logged() -> None:
    t = tiny_trainer()
    assert "loss/ac_d" not in t.d_step(_reals()) and "loss/ac_g" not in t.g_step()


def test_a_checkpoint_with_the_head_needs_the_flag(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="d_ac: checkpoint True vs now False"):
        check_same_model(_cfg(d_ac=True).resolved().to_dict(), _cfg().resolved(), tmp_path / "1.pt")
    old = _cfg().resolved().to_dict()
    del old["d_ac"]  # a checkpoint written before the head existed
    check_same_model(old, _cfg().resolved(), tmp_path / "1.pt")
