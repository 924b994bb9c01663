"""Consistency regularization for D (--cr_weight, --cr_fake_weight; CR-GAN: Zhang et al., ICLR 2020, Eq. 1; bCR:
Zhao et al., AAAI 2021, Eq. 2-3): the transform T (augment.consistency_transform), the penalty's value, which
images of D's update it sees, and that descending it makes D's output less sensitive to T."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import augment
import trainer as trainer_module
from trainer import consistency_loss
from test_train import tiny_trainer


def test_random_flip_mirrors_with_its_probability() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    assert torch.equal(augment.random_flip(x, 1.0), x.flip(3))
    assert torch.equal(augment.random_flip(x, 0.0), x)


def test_transform_shifts_by_at_most_an_eighth_and_mirrors_only_when_asked() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 16, 16) + 1.0  # every pixel > 0, so the zeros mark the border a shift brings in
    out = augment.consistency_transform(x, flip=False)
    for img, src in zip(out, x):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)  # 1/8 of 16 px: up to 2 px each way
                   if torch.equal(img, src.roll((-dy, -dx), (1, 2)) * _inside(dy, dx, 16))]
        assert matches, "each output is its input shifted by at most 2 px, zeros shifted in"
    assert any(not torch.equal(o, i) for o, i in zip(out, x))  # it does shift
    torch.manual_seed(1)
    mirrored = augment.consistency_transform(x, flip=True)
    torch.manual_seed(1)
    assert torch.equal(mirrored, augment.translation(augment.random_flip(x)))


def _inside(dy: int, dx: int, side: int) -> Tensor:
    """(1, side, side) mask of the pixels that an image shifted by (dy, dx) still covers."""
    rows = torch.arange(side).view(side, 1) + dy
    cols = torch.arange(side).view(1, side) + dx
    return ((rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)).float().unsqueeze(0)


def test_penalty_is_the_mean_squared_change() -> None:
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 6.0])
    assert consistency_loss(a, b).item() == pytest.approx((0 + 4 + 9) / 3)
    assert consistency_loss(a, a).item() == 0.0


def _batch() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 4, (8,), generator=g))]


@pytest.mark.parametrize("flags,terms", [
    ((), set()),
    (("--cr_weight", "10"), {"loss/cr"}),
    (("--cr_weight", "10", "--cr_fake_weight", "10"), {"loss/cr", "loss/cr_fake"}),
])
def test_d_update_logs_the_terms_it_adds(flags: tuple[str, ...], terms: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer(*flags)
    seen: list[Tensor] = []
    transform = augment.consistency_transform
    monkeypatch.setattr(augment, "consistency_transform", lambda x, flip: seen.append(x.detach().clone()) or transform(x, flip))
    logs = t.d_backward(_batch())
    assert {k for k in logs if k.startswith("loss/cr")} == terms
    assert len(seen) == len(terms)  # T runs once per term, never without one
    for name in terms:
        assert logs[name].item() > 0
    if "loss/cr" in terms:
        assert torch.equal(seen[0], _batch()[0][0])  # the real term sees the real images as they came


def test_the_real_term_uses_the_class_logits_too_where_d_has_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer("--cr_weight", "10", "--d_ac", "true")
    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(trainer_module, "consistency_loss",
                        lambda a, b: calls.append(tuple(a.shape)) or consistency_loss(a, b))
    t.d_backward(_batch())
    assert calls == [(8,), (8, 4)]  # D's logit, then its four class logits


def test_descending_the_term_makes_d_less_sensitive_to_the_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    t = tiny_trainer("--cr_weight", "1")
    t.d_loss_fn = lambda d_real, d_fake: (d_real.sum() + d_fake.sum()) * 0  # only the consistency term moves D
    monkeypatch.setattr(augment, "consistency_transform", lambda x, flip: x.roll(3, 3))  # one fixed shift
    batch = _batch()
    first = t.d_backward(batch)["loss/cr"].item()
    with torch.no_grad():
        for p in t.D.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / (p.grad.norm() + 1e-12)
    t.D.zero_grad(set_to_none=True)
    assert t.d_backward(batch)["loss/cr"].item() < first
