"""convert.py and the imported formats in checkpoints.py, against files written by the references' own
code (tests/data/peer_checkpoints, copied from ../shared/fixtures; see its README.md).

Each case is converted with convert.py, then loaded through the normal path (`Trainer.load`, as
`main.py --train false` does) and run in eval mode on the inputs in the case's io.pt: images must
agree within 2e-5 and logits within 1e-5 x max(1, max|logit|) with the outputs the reference's own
model gave.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
import legacy
import convert
import fakedata
from checkpoints import CheckpointError, load_checkpoint
from metrics import file_sha256
from parameter import get_parameters
from sagan_models import Discriminator, Generator, ModelConfig
from parameter import model_config, train_options
from trainer import Trainer

DATA = Path(__file__).resolve().parent / "data" / "peer_checkpoints"
ROOT = Path(__file__).resolve().parent.parent

SG_CIFAR = ["--preset", "studiogan_sagan_cifar10_32", "--g_conv_dim", "4", "--d_conv_dim", "8", "--z_dim", "32"]
SG_IN = ["--preset", "studiogan_sagan_imagenet_128", "--g_conv_dim", "2", "--d_conv_dim", "2", "--z_dim", "32",
         "--g_attn", "32", "--d_attn", "16"]
MM_CIFAR = ["--preset", "sagan_cifar10_32", "--g_conv_dim", "4", "--d_conv_dim", "8", "--z_dim", "32"]
MM_IN = ["--preset", "sagan_imagenet_128_biggan", "--g_conv_dim", "2", "--d_conv_dim", "2", "--z_dim", "32",
         "--g_attn", "32", "--d_attn", "16"]
HK = ["--preset", "sagan_celeb_64", "--g_conv_dim", "8", "--d_conv_dim", "8", "--z_dim", "32"]

# case id -> (case folder, sources relative to it, flags, the source's channel order)
CASES = {
    "studiogan_cifar10": ("studiogan_cifar10_sagan_tiny", ["."], SG_CIFAR, "rgb"),
    "studiogan_imagenet": ("studiogan_imagenet_sagan_tiny",
                           ["model=G-best-weights-step=2.pth", "model=D-best-weights-step=2.pth"], SG_IN, "rgb"),
    "mmagic1x_cifar10": ("mmagic_cifar10_sagan_tiny", ["iter_10.pth"], MM_CIFAR, "bgr"),
    "mmgen0x_cifar10": ("mmagic_cifar10_sagan_tiny", ["mmgen0x_published.pth"], MM_CIFAR, "bgr"),
    "mmagic1x_imagenet_ema": ("mmagic_imagenet_sagan_tiny", ["iter_3.pth"], MM_IN, "bgr"),
    "mmgen0x_imagenet_ema": ("mmagic_imagenet_sagan_tiny", ["mmgen0x_published.pth"], MM_IN, "bgr"),
    "heykeetae_64": ("heykeetae_64_tiny", ["2_G.pth", "2_D.pth"], HK, "rgb"),
}


def run_convert(case: str, version: str, extra: list[str] = ()) -> Path:
    folder, sources, flags, _ = CASES[case]
    argv = [str(DATA / folder / s) for s in sources] + ["--version", version] + flags + list(extra)
    assert convert.main(argv) == 0
    return Path("models") / version


def load_converted(version: str, flags: list[str]) -> Trainer:
    """The converted checkpoint through the path `main.py --train false` takes."""
    args = get_parameters(flags + ["--version", version, "--device", "cpu"])
    path = checkpoints.checkpoint_path(Path("models") / version, "latest")
    cfg = ModelConfig.from_dict(load_checkpoint(path)["model_config"])
    trainer = Trainer(train_options(args), cfg)
    trainer.load("latest", restore_training=False)
    return trainer


def close_images(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    assert diff <= 2e-5, f"images differ by {diff}"
    return diff


def close_logits(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().max().item()
    tol = 1e-5 * max(1.0, b.abs().max().item())
    assert diff <= tol, f"logits differ by {diff} > {tol}"
    return diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_checkpoint_reproduces_reference_outputs(case: str, workdir: Path) -> None:
    folder, _, flags, order = CASES[case]
    run_convert(case, "conv")
    io = torch.load(DATA / folder / "io.pt", weights_only=True)
    trainer = load_converted("conv", flags)
    G, D = trainer.G.eval(), trainer.D.eval()
    cond = trainer.cfg.num_classes > 0
    y, y_real = io.get("y"), io.get("y_real")
    x = io["x_u8"].to(torch.float32) / 127.5 - 1.0
    rgb = [2, 1, 0] if order == "bgr" else [0, 1, 2]  # the converted model is RGB: reverse a BGR reference's tensors
    with torch.no_grad():
        close_images(G(io["z"], y if cond else None), io["g_out"][:, rgb])
        if "g_ema_out" in io:
            n = io["g_ema_out"].shape[0]
            assert trainer.ema is not None and trainer.G_eval is trainer.ema.model
            close_images(trainer.ema.model.eval()(io["z"][:n], y[:n]), io["g_ema_out"][:, rgb])
            assert (trainer.ema.model(io["z"][:n], y[:n]) - G(io["z"][:n], y[:n])).abs().max() > 1e-3  # really another G
        logits = D(torch.cat([x, io["g_out"]])[:, rgb], torch.cat([y_real, y]) if cond else None)
        close_logits(logits, torch.cat([io["d_real"], io["d_fake"]]))
    if case == "heykeetae_64":  # its D attention maps, and G's sigmas (l4, l1, l2, l3 = our blocks 4, 0, 1, 2)
        with torch.no_grad():
            _, maps = D(x, return_attn=True)
        assert (maps[0] - io["d_attn1_real"]).abs().max() <= 2e-5
        assert (maps[1] - io["d_attn2_real"]).abs().max() <= 2e-5
        import spectral

        sigmas = [spectral.original_weight(G.blocks[i].conv) for i in (4, 0, 1, 2)]
        sns = [G.blocks[i].conv.parametrizations.weight[0] for i in (4, 0, 1, 2)]
        got = torch.stack([sn.sigma(w) for sn, w in zip(sns, sigmas)]).detach()
        assert torch.allclose(got, io["g_sigma"], rtol=1e-5)


def test_channel_order_rgb_keeps_the_raw_bgr_function(workdir: Path) -> None:
    """Without the flip the mapping alone reproduces the reference's raw (BGR) outputs."""
    run_convert("mmgen0x_cifar10", "raw", ["--channel_order", "rgb"])
    io = torch.load(DATA / "mmagic_cifar10_sagan_tiny" / "io.pt", weights_only=True)
    trainer = load_converted("raw", MM_CIFAR)
    x = io["x_u8"].to(torch.float32) / 127.5 - 1.0
    with torch.no_grad():
        close_images(trainer.G.eval()(io["z"], io["y"]), io["g_out"])
        close_logits(trainer.D.eval()(x, io["y_real"]), io["d_real"])
        assert (trainer.G(io["z"], io["y"]) - io["g_out"][:, [2, 1, 0]]).abs().max() > 1e-2  # the flip matters


def test_studiogan_pre_2022_embedding_tables(workdir: Path) -> None:
    """StudioGAN files before 2022-01-25 hold CBN tables as SN-Embeddings `embed0`/`embed1` (K, C), u (K,), v (C,)."""
    src = DATA / "studiogan_cifar10_sagan_tiny"
    old = workdir / "old"
    old.mkdir()
    for name in ("model=D-best-weights-step=2.pth", "model=G_ema-best-weights-step=2.pth", "model=G-best-weights-step=2.pth"):
        if name.startswith("model=D"):
            (old / name).write_bytes((src / name).read_bytes())
            continue
        obj = legacy.load_foreign(src / name)
        if name.startswith("model=G"):
            sd = {}
            renamed_leaf = {"weight_orig": "weight_orig", "weight_u": "weight_v", "weight_v": "weight_u"}
            for k, v in obj["state_dict"].items():
                for new, table in (("embed0", ".gain."), ("embed1", ".bias.")):
                    if table in k:
                        stem, leaf = k.rsplit(table, 1)
                        k = f"{stem}.{new}.{renamed_leaf[leaf]}"
                        v = v.t().contiguous() if leaf == "weight_orig" else v
                sd[k] = v
            assert any(".embed0.weight_orig" in k for k in sd) and not any(".gain." in k for k in sd)
            obj = {**obj, "state_dict": sd}
            obj.pop("optimizer", None)
        torch.save(obj, old / name)
    assert convert.main([str(old), "--version", "old"] + SG_CIFAR) == 0
    io = torch.load(src / "io.pt", weights_only=True)
    trainer = load_converted("old", SG_CIFAR)
    with torch.no_grad():
        close_images(trainer.G.eval()(io["z"], io["y"]), io["g_out"])
        close_images(trainer.ema.model.eval()(io["z"], io["y"]), io["g_ema_out"])


def test_optimizer_states_are_carried_over_exactly(workdir: Path) -> None:
    run_convert("studiogan_cifar10", "opt")
    ckpt = load_checkpoint(Path("models/opt/2.pt"))
    src = legacy.load_foreign(DATA / "studiogan_cifar10_sagan_tiny" / "model=G-best-weights-step=2.pth")
    their = [k for k in src["state_dict"] if legacy._is_param_key(k)]
    trainer = load_converted("opt", SG_CIFAR)
    ours = [n for n, _ in trainer.G.named_parameters()]
    assert len(ckpt["opt_g"]["state"]) == len(ours) == len(their)
    # a CBN gain table: their Linear (C, K) moments become our Embedding's (K, C), transposed
    i = their.index("blocks.0.0.bn1.gain.weight_orig")
    j = ours.index("blocks.0.bn1.gain.parametrizations.weight.original")
    assert torch.equal(ckpt["opt_g"]["state"][j]["exp_avg"], src["optimizer"]["state"][i]["exp_avg"].t())
    # gamma: (1,) -> ()
    i, j = their.index("blocks.2.0.sigma"), ours.index("blocks.2.gamma")
    assert torch.equal(ckpt["opt_g"]["state"][j]["exp_avg_sq"], src["optimizer"]["state"][i]["exp_avg_sq"].reshape(()))
    assert ckpt["opt_g"]["param_groups"][0]["eps"] == 1e-6  # StudioGAN's Adam eps, from the preset
    assert ckpt["source"]["format"] == "studiogan"
    assert set(ckpt["source"]["files"]) == {"G", "D", "G_ema"}
    for f in ckpt["source"]["files"].values():
        assert f["sha256"] == file_sha256(Path(f["path"]))
    options = json.loads(Path("models/opt/training_options.json").read_text())
    assert options["source"]["format"] == "studiogan" and options["step"] == 2


def test_an_existing_run_is_never_overwritten(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run_convert("heykeetae_64", "twice")
    before = Path("models/twice/2.pt").read_bytes()
    folder, sources, flags, _ = CASES["heykeetae_64"]
    assert convert.main([str(DATA / folder / s) for s in sources] + ["--version", "twice"] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds checkpoints" in err
    assert Path("models/twice/2.pt").read_bytes() == before


def test_bgr_optimizer_moments_follow_the_channel_flip(workdir: Path) -> None:
    run_convert("mmagic1x_cifar10", "bgr")
    ckpt = load_checkpoint(Path("models/bgr/2.pt"))
    src = legacy.load_foreign(DATA / "mmagic_cifar10_sagan_tiny" / "iter_10.pth")
    their_d = [k[len("discriminator."):] for k in src["state_dict"] if k.startswith("discriminator.") and legacy._is_param_key(k)]
    D = Discriminator(ModelConfig.from_dict(ckpt["model_config"]))
    ours = [n for n, _ in D.named_parameters()]
    i = their_d.index("from_rgb.conv_1.conv.weight_orig")
    j = ours.index("blocks.0.conv1.parametrizations.weight.original")
    assert torch.equal(ckpt["opt_d"]["state"][j]["exp_avg"], src["optimizer"]["discriminator"]["state"][i]["exp_avg"].flip(1))
    assert ckpt["step"] == 2  # iteration 10 with 5 D steps per G step


def test_every_full_size_schema_converts_completely() -> None:
    """The published configurations' full key schemas (random tensors of the recorded shapes): every key
    of the file is used, every key of ours is written once with the right shape."""
    schemas = json.loads((DATA / "schemas.json").read_text())["configs"]
    flags = {  # --init only speeds up building the models: it does not change the state-dict layout
        "studiogan/CIFAR10/SAGAN.yaml": ["--preset", "studiogan_sagan_cifar10_32"],
        "studiogan/ImageNet/SAGAN-256.yaml": ["--preset", "studiogan_sagan_imagenet_128", "--init", "xavier"],
        "mmagic/sagan_woReLUinplace_lr2e-4-ndisc5-1xb64_cifar10-32x32.py": ["--preset", "sagan_cifar10_32"],
        "mmagic/sagan_wReLUinplace_lr2e-4-ndisc5-1xb64_cifar10-32x32.py": ["--preset", "sagan_cifar10_32", "--d_relu_shortcut", "true"],
        "mmagic/sagan_woReLUinplace_Glr1e-4_Dlr4e-4_ndisc1-4xb64_imagenet1k-128x128.py":
            ["--preset", "sagan_imagenet_128", "--cbn_sn", "true", "--bn_eps", "1e-4"],
        "mmagic/sagan_woReLUinplace-Glr1e-4_Dlr4e-4_noaug-ndisc1-8xb32-bigGAN-sch_imagenet1k-128x128.py":
            ["--preset", "sagan_imagenet_128_biggan"],
        "mmagic/sagan_cvt-studioGAN_cifar10-32x32.py": ["--preset", "studiogan_sagan_cifar10_32"],
        "mmagic/sagan_128_cvt_studioGAN.py": ["--preset", "studiogan_sagan_imagenet_128", "--init", "xavier"],
        "heykeetae/64px": ["--preset", "sagan_celeb_64"],
    }
    assert set(flags) == set(schemas)

    def tensors(schema: dict[str, str]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in schema.items():
            dtype, shape = re.fullmatch(r"(\w+) \[([0-9, ]*)\] [PB]", v).groups()
            dims = [int(d) for d in shape.split(",") if d.strip()]
            out[k] = torch.empty(dims, dtype=getattr(torch, dtype))
        return out

    for name, schema in schemas.items():
        if name.startswith("studiogan"):
            files = {Path("model=G-best-weights-step=1.pth"): {"state_dict": tensors(schema["G"]), "optimizer": {}},
                     Path("model=D-best-weights-step=1.pth"): {"state_dict": tensors(schema["D"]), "step": 1}}
            variants = [files]
        elif name.startswith("mmagic"):
            sd1 = tensors(schema["state_dict_1x"])
            sd0 = {k.replace("generator_ema.module.", "generator_ema."): v for k, v in sd1.items() if k != "generator_ema.steps"}
            variants = [{Path("iter_1.pth"): {"meta": {"iter": 1}, "state_dict": sd1, "message_hub": {}}},
                        {Path("published.pth"): {"meta": {"iter": 1}, "state_dict": sd0}}]
        else:
            variants = [{Path("1_G.pth"): tensors(schema["G"]), Path("1_D.pth"): tensors(schema["D"])}]
        args = get_parameters(flags[name])
        for files in variants:
            src = legacy.parse_foreign(files)
            cfg = model_config(args, convert.num_classes_of(src))
            G, D = Generator(cfg), Discriminator(cfg)
            g_table, d_table = legacy.tables_for(src, G, D)
            for table, theirs, model in ((g_table, src.G, G), (d_table, src.D, D)) + (((g_table, src.G_ema, G),) if src.G_ema else ()):
                mapped = legacy.apply_table(table, theirs, model.state_dict(), name)  # raises on any gap
                assert set(mapped.state) == set(model.state_dict())
                assert len({e.src for e in mapped.origin.values()}) == len(theirs)  # every source tensor used once
            assert (src.G_ema is not None) == ("bigGAN-sch" in name)


def test_malicious_global_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    marker = workdir / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    src = DATA / "studiogan_cifar10_sagan_tiny"
    bad = workdir / "bad"
    bad.mkdir()
    d = legacy.load_foreign(src / "model=D-best-weights-step=2.pth")
    torch.save({"state_dict": d["state_dict"], "step": 2, "run_name": Evil()}, bad / "model=D-best-weights-step=2.pth")
    (bad / "model=G-best-weights-step=2.pth").write_bytes((src / "model=G-best-weights-step=2.pth").read_bytes())
    assert convert.main([str(bad), "--version", "evil"] + SG_CIFAR) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused to load" in err and "posix.system" in err
    assert not marker.exists() and not Path("models/evil").exists()


def test_shape_mismatch_is_one_line_and_writes_nothing(workdir: Path) -> None:
    src = DATA / "studiogan_cifar10_sagan_tiny"
    r = subprocess.run([sys.executable, str(ROOT / "convert.py"), str(src), "--version", "wrong", *SG_CIFAR, "--g_conv_dim", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "mis-shaped" in lines[0] and "linear0.weight_orig (256, 32) -> head.parametrizations.weight.original (512, 32)" in lines[0]
    assert not (workdir / "models").exists()


@pytest.mark.parametrize("argv, message", [
    (["studiogan_cifar10_sagan_tiny", "--version", "v", "--preset", "sagan_cifar10_32", "--g_conv_dim", "4", "--d_conv_dim", "8",
      "--z_dim", "32"], "--d_relu_shortcut true"),
    (["heykeetae_64_tiny", "--version", "v", "--preset", "sagan_celeb_64", "--g_conv_dim", "8", "--d_conv_dim", "8", "--z_dim", "32",
      "--sn_layers", "all"], "--sn_layers port --convt_sn_dim 0"),
    (["heykeetae_64_tiny", "--from", "studiogan", "--version", "v"] + HK, "--from studiogan, but"),
    (["heykeetae_64_tiny"] + HK, "pass --version NAME"),
    (["mmagic_cifar10_sagan_tiny/io.pt", "--version", "v"] + MM_CIFAR, "cannot tell the format"),
    (["studiogan_cifar10_sagan_tiny/model=G-best-weights-step=2.pth", "--version", "v"] + SG_CIFAR, "the D file"),
    (["studiogan_cifar10_sagan_tiny", "--version", "v"] + SG_CIFAR + ["--num_classes", "5"], "has 10 classes"),
])
def test_bad_conversions_are_one_line(argv: list[str], message: str, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [str(DATA / argv[0])] + argv[1:]
    assert convert.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not Path("models/v").exists()


@pytest.mark.slow
def test_convert_then_sample_then_fine_tune(workdir: Path) -> None:
    """convert.py -> main.py --train false (samples, class grid, attention figures) -> 2 fine-tuning steps."""
    fakedata.cifar10(workdir / "data", per_batch=8)
    common = SG_CIFAR + ["--version", "ft", "--device", "cpu", "--num_workers", "0", "--image_path", str(workdir / "data")]
    run_convert("studiogan_cifar10", "ft")

    def main(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *common, *extra], capture_output=True, text=True, cwd=workdir)

    r = main("--train", "false")
    assert r.returncode == 0, r.stderr
    assert "converted from studiogan; sampling the EMA generator" in r.stdout
    for name in ("2_sample.png", "2_classes.png", "2_interp.png"):
        assert (workdir / "samples/ft" / name).is_file()
    assert list((workdir / "attn/ft").glob("2_attn*.png"))
    r = main("--pretrained_model", "latest", "--total_step", "4", "--batch_size", "4", "--log_step", "1",
             "--sample_step", "2", "--model_save_step", "2", "--attn_samples", "0", "--ema", "true", "--ema_start", "0")
    assert r.returncode == 0, r.stderr
    assert "resumed from models/ft/2.pt at step 2" in r.stdout and "step 4/4" in r.stdout
    ckpt = load_checkpoint(workdir / "models/ft/4.pt")
    assert ckpt["step"] == 4 and ckpt["source"]["format"] == "studiogan"  # the origin stays with the fine-tuned model
    before = load_checkpoint(workdir / "models/ft/2.pt")
    moved = [k for k, v in before["G"].items() if v.is_floating_point() and not torch.equal(v, ckpt["G"][k])]
    assert moved, "fine-tuning changed nothing"
    # Adam continued from the carried-over moments: its step count went from StudioGAN's to +2 G updates
    assert ckpt["opt_g"]["state"][0]["step"].item() == before["opt_g"]["state"][0]["step"].item() + 2


def test_checkpoint_module_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        legacy.load_foreign(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        legacy.load_foreign(tmp_path)


def test_config_text_decides_the_channel_order_and_the_relu_before_the_file_name() -> None:
    assert legacy.source_is_bgr("", "sagan_cifar10.pth") is True
    assert legacy.source_is_bgr("", "sagan_convert-studio-rgb.pth") is False
    assert legacy.source_is_bgr("generator=dict(rgb_to_bgr=False)", "sagan_convert-studio-rgb.pth") is True
    assert legacy.source_is_bgr("generator=dict(rgb_to_bgr=True)", "sagan_cifar10.pth") is False
    assert convert.relu_inplace("", "sagan_woReLUinplace_x.pth") is False
    assert convert.relu_inplace("", "sagan_wReLUinplace_x.pth") is True
    assert convert.relu_inplace("act_cfg=dict(type='ReLU', inplace=False)", "sagan_wReLUinplace_x.pth") is False
    assert convert.relu_inplace("", "iter_10.pth") is None


@pytest.mark.parametrize("name, flags, message", [
    ("sagan_woReLUinplace_tiny.pth", ["--d_relu_shortcut", "true"], "uses ReLU without in-place (the 'woReLUinplace' rows)"),
    ("sagan_wReLUinplace_tiny.pth", [], "uses in-place ReLU (the 'wReLUinplace' rows): add --d_relu_shortcut true"),
])
def test_a_relu_mismatch_either_way_is_refused(name: str, flags: list[str], message: str, workdir: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    src = workdir / name
    src.write_bytes((DATA / "mmagic_cifar10_sagan_tiny" / "iter_10.pth").read_bytes())
    assert convert.main([str(src), "--version", "v", *MM_CIFAR, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not Path("models/v").exists()


def test_a_negative_step_is_refused(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    bad = workdir / "neg"
    bad.mkdir()
    for f in (DATA / "studiogan_cifar10_sagan_tiny").glob("model=*.pth"):
        obj = torch.load(f, weights_only=False)  # our own fixture: trusted
        obj["step"] = -7
        torch.save(obj, bad / f.name)
    assert convert.main([str(bad), "--version", "v", *SG_CIFAR]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a step cannot be negative" in err, err
    assert not Path("models/v").exists() and not list(workdir.glob("models/v/*.pt"))


def test_an_empty_source_file_is_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    empty = workdir / "empty"
    empty.mkdir()
    for name in ("model=G-best-weights-step=2.pth", "model=D-best-weights-step=2.pth"):
        (empty / name).write_bytes(b"")
    assert convert.main([str(empty), "--version", "v", *SG_CIFAR]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is empty (0 bytes)" in err, err
    assert not Path("models/v").exists()


def test_a_studiogan_run_folder_on_the_hub_converts(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hf://USER/REPO/<run folder> lists the folder and fetches its best G, D and G_ema files (huggingface_hub's two
    calls are replaced by the fixture files; every other line is the real path)."""
    import huggingface_hub

    src = DATA / "studiogan_cifar10_sagan_tiny"
    folder = "studiogan_official_ckpt/CIFAR10_tailored/CIFAR10-SAGAN-train-x"
    entries = [type("Entry", (), {"path": f"{folder}/{p.name}"})() for p in sorted(src.glob("*.pth"))]
    entries.append(type("Entry", (), {"path": f"{folder}/model=G-current-weights-step=3.pth"})())  # not a best file
    fetched = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", lambda self, repo, path_in_repo, revision=None: entries)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, revision=None: fetched.append((repo, name)) or str(src / Path(name).name))
    assert convert.main([f"hf://Mingguksky/PyTorch-StudioGAN/{folder}", "--version", "hub", *SG_CIFAR]) == 0
    assert sorted(n for _, n in fetched) == sorted(f"{folder}/{p.name}" for p in src.glob("*.pth"))
    assert {r for r, _ in fetched} == {"Mingguksky/PyTorch-StudioGAN"}
    assert load_checkpoint(Path("models/hub/2.pt"))["source"]["format"] == "studiogan"
