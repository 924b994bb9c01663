"""DiffAugment (augment.py): each transform does what the reference's does, and the Trainer puts every image D
sees through it, real and fake, in D's and G's updates."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import augment
from parameter import get_parameters, model_config, train_options
from trainer import Trainer
from test_train import TINY


def shifted(x: Tensor, dy: int, dx: int) -> Tensor:
    """x moved so that out[i, j] = x[i + dy, j + dx], zeros where that falls outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = x[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def test_translation_is_a_whole_pixel_shift_within_an_eighth() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 2, 32, 32) + 1  # no zeros, so the border that comes in is visible
    out = augment.translation(x)
    seen = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(hits) == 1, f"image {i} is not a shift of at most 4 pixels"
        seen.add(hits[0])
    assert len(seen) > 20  # shifts differ per image


def test_cutout_zeroes_one_clipped_half_side_square() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 1, 32, 32) + 1
    out = augment.cutout(x)
    areas = []
    for i in range(len(x)):
        zero = out[i, 0] == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols), "the zeroed pixels are not one rectangle"
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])
        areas.append(int(zero.sum()))
    assert max(areas) == 256 and min(areas) < 256  # whole 16 x 16 squares inside, clipped ones at the edges


def test_color_factors_per_image_and_gradients_flow() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    out = augment.diff_augment(x, ("color", "translation", "cutout"))
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    gray = torch.full((4, 1, 8, 8), 0.25)
    shifted_gray = augment.color(gray)  # one channel, flat image: only brightness changes it
    assert all(torch.allclose(img, img.flatten()[0].expand_as(img)) for img in shifted_gray)
    assert ((shifted_gray - 0.25).abs() <= 0.5).all() and shifted_gray.unique().numel() == 4


def test_policy_parsing() -> None:
    assert augment.parse_policy(" translation, cutout ") == ("translation", "cutout")
    assert augment.parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.parse_policy("translation,flip")


def test_trainer_augments_reals_and_fakes_in_both_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, bool]] = []

    def spy(x: Tensor) -> Tensor:
        calls.append((x.shape[0], x.requires_grad))
        return x.flip(2)

    monkeypatch.setitem(augment.TRANSFORMS, "cutout", spy)
    args = get_parameters(["--imsize", "32", "--num_classes", "4", *TINY, "--n_dis", "2", "--diffaug", "cutout"])
    trainer = Trainer(train_options(args), model_config(args, 4))
    batches = iter([(torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 4, (4,))) for _ in range(2)])
    trainer.iteration(batches)
    # two D updates (real, fake each; fakes detached), then G's fakes (with a graph back to G)
    assert calls == [(4, False), (4, False), (4, False), (4, False), (4, True)]


def test_flag_off_draws_no_random_numbers() -> None:
    args = get_parameters(["--imsize", "32", *TINY])
    trainer = Trainer(train_options(args), model_config(args, 4))
    x = torch.randn(2, 3, 32, 32)
    state = torch.get_rng_state()
    assert trainer.augment(x) is x and torch.equal(torch.get_rng_state(), state)
