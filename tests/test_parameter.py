"""Flags: heykeetae's command lines parse verbatim, booleans parse exactly, new flags resolve."""

import argparse
import shlex

import pytest

from parameter import get_parameters, resolutions, str2bool

SEED_LINES = [
    "--batch_size 64 --imsize 64 --dataset celeb --adv_loss hinge --version sagan_celeb",
    "--batch_size 64 --imsize 64 --dataset lsun --adv_loss hinge --version sagan_lsun",
    "--batch_size 64 --imsize 64 --dataset celeb --adv_loss hinge --version sagan_celeb --total_step 100000 --span 3",
]


@pytest.mark.parametrize("line", SEED_LINES)
def test_seed_lines_parse(line: str) -> None:
    a = get_parameters(shlex.split(line))
    assert (a.batch_size, a.imsize, a.adv_loss) == (64, 64, "hinge")
    assert a.dataset in ("celeb", "lsun") and a.version.startswith("sagan_")
    if "--span" in line:
        assert (a.total_step, a.span) == (100000, 3)


@pytest.mark.parametrize("text,value", [("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
                                        ("false", False), ("False", False), ("0", False), ("no", False), ("off", False)])
def test_str2bool_exact(text: str, value: bool) -> None:
    assert str2bool(text) is value


@pytest.mark.parametrize("text", ["", "t1", "maybe", "2", "yess"])
def test_str2bool_rejects_everything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool(text)


def test_bool_flags_on_the_command_line() -> None:
    a = get_parameters(["--train", "false", "--use_tensorboard", "0", "--parallel", "yes", "--g_sn", "no", "--flip", "1"])
    assert (a.train, a.use_tensorboard, a.parallel, a.g_sn, a.flip) == (False, False, True, False, True)
    with pytest.raises(SystemExit):
        get_parameters(["--train", "nope"])


def test_old_port_flags_keep_their_names() -> None:
    old = ("--model sagan --adv_loss wgan-gp --imsize 32 --g_num 5 --z_dim 128 --g_conv_dim 64 --d_conv_dim 64 "
           "--lambda_gp 10 --version sagan_1 --total_step 1000000 --d_iters 5 --batch_size 64 --num_workers 2 "
           "--g_lr 0.0001 --d_lr 0.0004 --lr_decay 0.95 --beta1 0.0 --beta2 0.9 --pretrained_model None "
           "--train True --parallel False --dataset cifar --use_tensorboard False --image_path ./data "
           "--log_path ./logs --model_save_path ./models --sample_path ./samples --attn_path ./attn "
           "--log_step 10 --sample_step 100 --model_save_step 1.0")
    a = get_parameters(shlex.split(old))
    assert a.n_dis == 5 and a.dataset == "cifar10" and a.pretrained_model is None and a.model_save_step == 1
    assert a.lr_decay == 0.95 and a.beta2 == 0.9 and a.use_tensorboard is False


def test_new_flags() -> None:
    a = get_parameters(shlex.split("--arch dcgan --g_attn 16,32 --d_attn none --attn_variant paper --n_dis 2 "
                                   "--num_classes 0 --seed 3 --device cpu --dry_run --pretrained_model latest"))
    assert (a.arch, a.g_attn, a.d_attn, a.attn_variant, a.n_dis) == ("dcgan", (16, 32), (), "paper", 2)
    assert (a.num_classes, a.seed, a.device, a.dry_run, a.pretrained_model) == (0, 3, "cpu", True, "latest")
    d = get_parameters([])
    assert d.g_attn is None and d.d_attn is None and d.adv_loss == "hinge" and d.n_dis == 1 and d.dataset == "shapes"


def test_resolution_lists() -> None:
    assert resolutions("16, 32") == (16, 32) and resolutions("none") == () and resolutions("default") is None
    with pytest.raises(argparse.ArgumentTypeError):
        resolutions("sixteen")
