"""Flags: heykeetae's command lines parse verbatim, booleans parse exactly, new flags resolve."""

import argparse
import shlex
from pathlib import Path

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


# -- presets --------------------------------------------------------------------------------------

# (preset, G parameters, D parameters) as documented in docs/reproducing.md.
PRESET_COUNTS = [
    ("sagan_cifar10_32", 4_386_308, 1_075_586),
    ("sngan_proj_cifar10_32", 4_304_387, 1_055_105),
    ("sagan_imagenet_128", 42_017_412, 39_448_258),
    ("sagan_imagenet_128_feat32", 42_078_852, 39_463_618),
    ("sagan_imagenet_128_biggan", 42_017_412, 39_448_258),
    ("sngan_proj_imagenet_128", 41_996_931, 39_443_137),
    ("sagan_celeb_64", 3_832_885, 3_175_299),
    ("sagan_lsun_64", 3_832_885, 3_175_299),
    ("nonlocal_sagan_celeb_64", 3_832_885, 2_846_978),
    ("demo", 128_452, 68_258),
    ("studiogan_sagan_cifar10_32", 4_386_308, 1_075_586),  # StudioGAN's CIFAR10 SAGAN log
    ("studiogan_sagan_imagenet_128", 42_017_412, 39_448_258),  # StudioGAN's ImageNet SAGAN log
    ("fmnist_32", 240_868, 68_780),
    ("fmnist_32_long", 380_804, 70_070),
]


def test_every_preset_is_documented_and_tested() -> None:
    from parameter import PRESETS

    assert sorted(PRESETS) == sorted(name for name, _, _ in PRESET_COUNTS)
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reproducing.md").read_text()
    for name in PRESETS:
        assert f"--preset {name}" in readme, name


@pytest.mark.parametrize("name,g,d", PRESET_COUNTS)
def test_preset_dry_run_builds_with_documented_counts(name: str, g: int, d: int, capsys: pytest.CaptureFixture) -> None:
    from main import main

    assert main(["--preset", name, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"G parameters: {g:,}" in out and f"D parameters: {d:,}" in out
    assert f'"preset": "{name}"' in out


def test_reference_specific_preset_settings() -> None:
    """StudioGAN's own runs: in-place-ReLU D shortcut and its eps values; heykeetae's runs: its SN placement and matrix."""
    for name in ("studiogan_sagan_cifar10_32", "studiogan_sagan_imagenet_128"):
        a = get_parameters(["--preset", name])
        assert (a.d_relu_shortcut, a.sn_eps, a.adam_eps, a.bn_eps, a.cbn_sn, a.init, a.flip) == (True, 1e-6, 1e-6, 1e-4, True, "ortho", True)
    m = get_parameters(["--preset", "sagan_cifar10_32"])
    assert (m.d_relu_shortcut, m.sn_eps, m.adam_eps) == (False, 1e-12, 1e-8)  # MMGeneration's woReLUinplace row, Adam eps 1e-8
    for name in ("sagan_celeb_64", "sagan_lsun_64", "nonlocal_sagan_celeb_64"):
        a = get_parameters(["--preset", name])
        assert (a.sn_layers, a.convt_sn_dim) == ("port", 0)
    paper = get_parameters(["--preset", "sagan_celeb_64", "--sn_layers", "all", "--convt_sn_dim", "1"])
    assert (paper.sn_layers, paper.convt_sn_dim) == ("all", 1)


def test_preset_values_and_explicit_override() -> None:
    a = get_parameters(["--preset", "sagan_cifar10_32"])
    assert (a.dataset, a.imsize, a.batch_size, a.g_lr, a.d_lr, a.beta1, a.beta2, a.n_dis, a.total_step) == \
        ("cifar10", 32, 64, 2e-4, 2e-4, 0.5, 0.999, 5, 100_000)
    assert (a.flip, a.init, a.g_attn, a.d_attn, a.version, a.preset) == (True, "ortho", (16,), (16,), "sagan_cifar10_32", "sagan_cifar10_32")
    b = get_parameters(["--preset", "sagan_cifar10_32", "--g_lr", "1e-4", "--version", "mine", "--flip", "false"])
    assert (b.g_lr, b.d_lr, b.version, b.flip) == (1e-4, 2e-4, "mine", False)
    i = get_parameters(["--preset", "sagan_imagenet_128"])
    assert (i.batch_size, i.global_batch, i.g_attn, i.n_dis, i.beta1, i.total_step) == (256, 256, (64,), 1, 0.0, 1_000_000)
    assert get_parameters(["--preset", "sagan_imagenet_128", "--accum", "4"]).batch_size == 64
    assert get_parameters(["--preset", "sagan_imagenet_128", "--batch_size", "32"]).global_batch is None
    e = get_parameters(["--preset", "sagan_imagenet_128_biggan"])
    assert (e.ema, e.ema_decay, e.ema_start, e.init, e.flip, e.sn_eps) == (True, 0.999, 2000, "xavier", False, 1e-8)
    s = get_parameters(["--preset", "sngan_proj_imagenet_128"])
    assert (s.g_lr, s.d_lr, s.n_dis, s.g_sn, s.g_attn) == (2e-4, 5e-5, 5, False, ())
    n = get_parameters(["--preset", "nonlocal_sagan_celeb_64"])
    assert (n.arch, n.attn_variant, n.span, n.g_attn, n.d_attn, n.beta2, n.num_classes) == ("dcgan", "paper", 3, (16, 32), (8,), 0.9, 0)
    with pytest.raises(SystemExit):
        get_parameters(["--preset", "sagan_imagenet_128", "--accum", "3"])
    with pytest.raises(SystemExit):
        get_parameters(["--preset", "no_such_preset"])


@pytest.mark.parametrize("turned_off,fix,attr", [
    (["--d_ac", "false"], ["--d_tac", "false"], "d_tac"),
    (["--ms_weight", "0"], ["--ms_space", "image"], "ms_space"),
])
def test_a_setting_the_preset_made_is_refused_with_the_flag_that_turns_it_off(
        turned_off: list[str], fix: list[str], attr: str, capsys: pytest.CaptureFixture) -> None:
    """Turning off what a preset's setting needs names that setting's own off value, and the fix then parses."""
    preset = ["--preset", "fmnist_32_long"]
    with pytest.raises(SystemExit):
        get_parameters(preset + turned_off)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--preset fmnist_32_long sets --{attr} " in err and f"with {' '.join(turned_off)} add {' '.join(fix)}" in err, err
    assert str(getattr(get_parameters(preset + turned_off + fix), attr)).lower() == fix[1]
    preset_value = str(getattr(get_parameters(preset), attr)).lower()
    assert preset_value != fix[1]
    with pytest.raises(SystemExit):  # typed as well as preset: dropping the flag alone would not be enough
        get_parameters(preset + turned_off + [fix[0], preset_value])
    assert f"or set {' '.join(fix)}" in capsys.readouterr().err


def test_seed_lines_resolve_to_the_documented_configuration() -> None:
    """The README's seed lines: our defaults (paper's ResNet, official attention at 32x32, hinge, TTUR)."""
    from main import resolve_num_classes
    from parameter import model_config

    for line in SEED_LINES:
        a = get_parameters(shlex.split(line))
        cfg = model_config(a, resolve_num_classes(a, 0))
        assert (cfg.arch, cfg.imsize, cfg.g_attn, cfg.d_attn, cfg.attn_variant, cfg.num_classes, cfg.init) == \
            ("resnet", 64, (32,), (32,), "official", 0, "xavier")
        assert (a.batch_size, a.g_lr, a.d_lr, a.beta1, a.beta2, a.n_dis, a.adv_loss, a.preset) == \
            (64, 1e-4, 4e-4, 0.0, 0.999, 1, "hinge", None)
        assert cfg.span == (3 if "--span 3" in line else 0)
