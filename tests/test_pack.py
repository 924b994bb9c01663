"""PacGAN's packing by label (ModelConfig.d_pack, --d_pack; Lin et al., NeurIPS 2018): the pack order and layout,
D's input and validation, what D's and G's updates hand D, and the refusals of the paths that judge single images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from checkpoints import check_same_model
from convert import flag_problems
from parameter import get_parameters, model_config, train_options
from sagan_models import Discriminator, ModelConfig, pack_images, pack_order
from test_aux_classifier import _cfg, _reals
from test_fmnist import fake_fmnist, tiny_run_flags
from test_train import TINY, tiny_trainer
from trainer import Trainer


def test_pack_order_groups_each_label_and_drops_its_remainder() -> None:
    y = torch.tensor([3, 1, 3, 0, 1, 1, 3, 2, 3, 1])
    for m in (2, 3):
        keep = pack_order(y, m)
        packs = y[keep].reshape(-1, m)
        assert (packs == packs[:, :1]).all()  # one label per pack
        assert len(set(keep.tolist())) == len(keep)  # no image twice
        for c in range(4):
            assert (y[keep] == c).sum() == (y == c).sum() // m * m  # every full pack of each label, none of the rest


def test_pack_images_stacks_consecutive_images_on_channels() -> None:
    x = torch.randn(6, 3, 4, 4)
    packed = pack_images(x, 3)
    assert packed.shape == (2, 9, 4, 4)
    for p in range(2):
        assert torch.equal(packed[p], torch.cat(list(x[3 * p: 3 * p + 3]), dim=0))


def test_a_packed_d_judges_both_images_of_a_pack_once() -> None:
    torch.manual_seed(0)
    d = Discriminator(_cfg(d_pack=2, d_ac=True)).eval()
    assert d.blocks[0].conv1.in_channels == 6
    x, y = torch.randn(3, 6, 32, 32), torch.tensor([0, 1, 2])
    with torch.no_grad():
        out, cls = d(x, y, return_cls=True)
        x2 = x.clone()
        x2[1, 3:] = torch.randn(3, 32, 32)  # the second image of pack 1
        out2 = d(x2, y)
    assert out.shape == (3,) and cls.shape == (3, 4)
    assert out2[1] != out[1] and torch.equal(out2[[0, 2]], out[[0, 2]])
    with pytest.raises(ValueError, match="takes 6 channels, got 3"):
        d(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 1"):
        _cfg(d_pack=0).resolved()


def test_packing_is_off_unless_asked_and_older_checkpoints_load(tmp_path: Path) -> None:
    assert ModelConfig().d_pack == 1 and get_parameters([]).d_pack == 1
    assert Discriminator(_cfg()).blocks[0].conv1.in_channels == 3
    old = _cfg().resolved().to_dict()
    del old["d_pack"]  # a checkpoint written before packing existed
    check_same_model(old, _cfg().resolved(), tmp_path / "1.pt")


def _seen_by_d(t: object, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    """Record every input and label D's training forward receives, and every label batch G draws."""
    seen, drawn = [], []
    d_train, g_train = t.w.d_train, t.w.g_train
    monkeypatch.setattr(t.w, "d_train", lambda x, y, **kw: seen.append((x.detach(), y)) or d_train(x, y, **kw))
    monkeypatch.setattr(t.w, "d_frozen", lambda x, y, **kw: seen.append((x.detach(), y)) or d_train(x, y, **kw))
    monkeypatch.setattr(t.w, "g_train", lambda z, y: drawn.append((z, y)) or g_train(z, y))
    return seen, drawn


def test_d_update_packs_reals_of_one_label_and_as_many_packs_of_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer("--d_ac", "true", "--d_pack", "2")
    seen, drawn = _seen_by_d(t, monkeypatch)
    x, y = torch.rand(8, 3, 32, 32) * 2 - 1, torch.tensor([0, 2, 0, 1, 2, 2, 3, 0])
    logs = t.d_step([(x, y)])
    (real, y_real), (fake, y_fake) = seen
    assert real.shape == (2, 6, 32, 32) and fake.shape == (2, 6, 32, 32)  # three 0s and three 2s: one pair each
    assert y_real.tolist() == [0, 2]
    for img, label in zip(real, y_real):
        a, b = img[:3], img[3:]
        assert not torch.equal(a, b)
        for half in (a, b):  # each half is one of the batch's images of the pack's label
            assert any(torch.equal(half, x[i]) for i in range(8) if y[i] == label)
    (_, y_drawn), = drawn
    assert torch.equal(y_drawn, y_fake.repeat_interleave(2))  # G drew each fake pack's two images with its label
    assert torch.isfinite(logs["loss/d"]) and torch.isfinite(logs["loss/ac_d"])


def test_g_update_packs_its_batch_and_pairs_packs_for_the_mode_seeking_term(monkeypatch: pytest.MonkeyPatch) -> None:
    t = tiny_trainer("--d_ac", "true", "--d_pack", "2", "--ms_weight", "1", "--ms_space", "d")
    seen, drawn = _seen_by_d(t, monkeypatch)
    logs = t.g_step()
    (packed, y_packs), = seen
    (z, y), = drawn
    assert packed.shape == (4, 6, 32, 32) and torch.equal(y, y_packs.repeat_interleave(2))
    assert torch.equal(y_packs[:2], y_packs[2:])  # the halves' packs share labels, as MSGAN pairs them
    assert z.shape == (8, t.cfg.z_dim) and torch.isfinite(logs["loss/ms"]) and logs["loss/ms"] > 0


def test_impossible_pack_settings_are_one_error_line(capsys: pytest.CaptureFixture) -> None:
    for argv, want in ((["--d_pack", "2", "--batch_size", "7"], "--batch_size must be a multiple of 2, got 7"),
                       (["--d_pack", "2", "--ms_weight", "1", "--batch_size", "6"], "--batch_size must be a multiple of 4, got 6"),
                       (["--d_pack", "0"], "expected a number >= 1")):
        with pytest.raises(SystemExit):
            get_parameters(argv)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and want in err
    with pytest.raises(ValueError, match="use --batch_size 9 or more"):
        tiny_trainer("--d_pack", "3", "--batch_size", "6")  # 6 images over 4 classes may hold no three of one class


def test_convert_refuses_a_packed_d() -> None:
    src = SimpleNamespace(format="studiogan")
    args = get_parameters(["--d_relu_shortcut", "true", "--bn_eps", "1e-4", "--d_pack", "2"])
    assert flag_problems(src, args) == ["studiogan's D judges one image at a time, and --d_pack 2 builds a D for packs: drop --d_pack"]


def test_a_packed_run_trains_and_refuses_single_image_judgements(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from main import main

    fake_fmnist(workdir / "fm", n_train=120, n_test=40)
    base = tiny_run_flags(workdir, "--g_conv_dim", "8", "--d_conv_dim", "8", "--attn_samples", "0", "--version", "p",
                          "--d_pack", "2", "--batch_size", "12")
    assert main([*base, "--eval_step", "0", "--sample_step", "100", "--model_save_step", "4"]) == 0
    assert "= 12 images per D update (D judges them in packs of 2 of one label;" in capsys.readouterr().out
    for flag in (["--drs", "80"], ["--attn_html", "true"]):
        assert main(["--train", "false", *base, *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"drop {flag[0]}" in err and "packs of 2" in err


def test_unlabelled_d_update_packs_images_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    args = get_parameters(["--imsize", "32", "--num_classes", "0", *TINY, "--batch_size", "8", "--d_pack", "2"])
    t = Trainer(train_options(args), model_config(args, 0))
    seen, _ = _seen_by_d(t, monkeypatch)
    x = torch.rand(7, 3, 32, 32) * 2 - 1
    t.d_step([(x, torch.zeros(7, dtype=torch.long))])
    (real, y_real), (fake, y_fake) = seen
    assert y_real is None and y_fake is None and fake.shape == (3, 6, 32, 32)
    assert torch.equal(real, pack_images(x[:6], 2))  # the first six in order; the seventh sits the update out
