"""Sharing a model: export.py's folder (safetensors, config, model card), torch.hub.load through hubconf.py on a
run folder and on its export, hf:// through the same code path with only the download replaced, and exported
folders wherever a checkpoint loads (sampling, fine-tuning)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import checkpoints
import export
from main import main
from parameter import get_parameters

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--dataset shapes --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 --batch_size 4 --num_workers 0 --device cpu "
         "--sample_step 2 --model_save_step 2 --log_step 1 --attn_samples 0 --use_tensorboard false --ema true --ema_start 1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional run with an EMA G, trained 2 steps, and its export."""
    work = tmp_path_factory.mktemp("export")
    old = Path.cwd()
    os.chdir(work)
    try:
        assert main(shlex.split(FLAGS + " --version tiny --total_step 2")) == 0
        assert export.main(["--version", "tiny", "--license", "mit"]) == 0
    finally:
        os.chdir(old)
    return work


def test_the_export_folder_holds_safetensors_config_grid_and_card(trained: Path) -> None:
    from safetensors import safe_open

    out = trained / "exports" / "tiny"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "samples.png"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:  # safetensors alone: no code runs
        keys = list(f.keys())
        ckpt = torch.load(trained / "models/tiny/2.pt", weights_only=True)
        for part in ("G", "G_ema", "D"):
            assert {k for k in keys if k.startswith(part + ".")} == {f"{part}.{k}" for k in ckpt[part]}
            name = next(iter(ckpt[part]))
            assert torch.equal(f.get_tensor(f"{part}.{name}"), ckpt[part][name])
    assert (out / "model.safetensors").read_bytes()[8:9] == b"{"  # a JSON header, then raw tensor bytes: no pickle
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "sagan-export" and config["step"] == 2 and config["ema"] is True
    assert config["model_config"] == json.loads(json.dumps(ckpt["model_config"])) and config["flags"]["version"] == "tiny"
    assert config["checkpoint"]["file"] == "2.pt" and len(config["checkpoint"]["sha256"]) == 64
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "![samples](samples.png)" in card and "datasets: [shapes]" in card
    command = card.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert command.startswith("python main.py ") and "--z_dim 16" in command
    rerun = json.loads(json.dumps(vars(get_parameters(shlex.split(command)[2:]))))
    assert rerun == config["flags"]  # the card's command line is the run's, flag for flag
    assert "not evaluated" in card


def test_torch_hub_loads_the_run_and_its_export_to_the_same_images(trained: Path) -> None:
    run, out = trained / "models" / "tiny", trained / "exports" / "tiny"
    G_run = torch.hub.load(str(ROOT), "generator", str(run), source="local", trust_repo=True)
    G_exp = torch.hub.load(str(ROOT), "generator", str(out), source="local", trust_repo=True)
    assert not G_run.training and not G_exp.training
    z, y = torch.randn(6, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        assert torch.equal(G_run(z, y), G_exp(z, y))  # bit for bit
    ema = torch.load(run / "2.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(v, ema[k]) for k, v in G_exp.state_dict().items())  # the EMA generator
    images = G_exp.generate(5, labels=2, seed=7)
    assert images.shape == (5, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, G_run.generate(5, labels=2, seed=7))
    assert torch.allclose(G_exp.generate(5, labels=2, seed=7, value_range=(-1, 1)), images * 2 - 1, atol=1e-6)
    D_run = torch.hub.load(str(ROOT), "discriminator", str(run), source="local", trust_repo=True)
    D_exp = torch.hub.load(str(ROOT), "discriminator", str(out), source="local", trust_repo=True)
    x = images * 2 - 1
    with torch.no_grad():
        assert torch.equal(D_run(x, torch.full((5,), 2)), D_exp(x, torch.full((5,), 2)))


def test_hf_paths_share_the_local_path_with_only_the_download_replaced(trained: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []

    def fake_download(repo_id: str, filename: str, revision: str | None = None) -> str:
        calls.append((repo_id, filename, revision))
        target = tmp_path / "cache" / repo_id / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained / "exports" / "tiny" / Path(filename).name, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    G = checkpoints.load_generator("hf://someone/tiny-sagan/sub@v1")
    assert calls == [("someone/tiny-sagan", "sub/config.json", "v1"), ("someone/tiny-sagan", "sub/model.safetensors", "v1")]
    G_exp = checkpoints.load_generator(trained / "exports" / "tiny")
    assert G.step == 2 and G.ema and torch.equal(G.G.generate(4, seed=1), G_exp.G.generate(4, seed=1))
    with pytest.raises(checkpoints.CheckpointError, match="hf://USER/REPO"):
        checkpoints.load_generator("hf://no-repo")


def test_an_export_samples_and_fine_tunes_through_main(trained: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(trained)
    out = str(trained / "exports" / "tiny")
    assert main(shlex.split(FLAGS + f" --train false --version from_export --pretrained_model {out} --attn_samples 1")) == 0
    assert (trained / "samples" / "from_export" / "2_sample.png").is_file()
    assert (trained / "attn" / "from_export" / "2_attn0.png").is_file()  # attention maps of the exported G
    assert main(shlex.split(FLAGS + f" --version tuned --total_step 4 --pretrained_model {out}")) == 0
    text = capsys.readouterr().out
    assert "fine-tuning the export" in text and "the optimizers start fresh" in text
    assert checkpoints.load_generator(trained / "models" / "tuned").step == 4


def test_a_broken_export_and_a_push_without_login_are_one_line(trained: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained / "exports" / "tiny", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(checkpoints.CheckpointError, match="is not a complete export"):
        checkpoints.load_generator(broken)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(checkpoints.CheckpointError, match="not logged in"):
        export.push(trained / "exports" / "tiny", "someone/tiny-sagan")


def test_metric_names_carry_their_sample_count() -> None:
    record = {"step": 600, "kimg": 38.4, "seconds": 17.7, "samples": 2000, "ref_samples": 50000, "cls_acc": 0.518,
              "fid_cls": 136.4, "cls_acc_per_class": [0.1, 0.2]}
    assert export.scalar_metrics(record) == {"cls_acc2k": 0.518, "fid_cls2k": 136.4}
    truncated = {**record, "truncation": 1.5}
    assert export.scalar_metrics(truncated) == {"cls_acc2k_trunc1.5": 0.518, "fid_cls2k_trunc1.5": 136.4}
    assert export.scalar_metrics({**record, "truncation": 0.0}) == export.scalar_metrics(record)
