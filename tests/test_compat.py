"""Older torch releases (the README's supported range starts at 2.4), checked on the pinned torch.

Two things that work on the pinned torch and broke on torch 2.5 until they were changed:
- torch before 2.6 cannot save a uint16/32/64 tensor, so a checkpoint may hold none (numpy's random key
  was a uint32 tensor);
- torch before 2.6 looks allow-listed globals up by `__module__` + `__name__` only, with no
  (object, "name") pairs, so the stand-ins that load the references' files must spell those names.
"""

from __future__ import annotations

import random
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import legacy
from main import main
from test_reliability import flat_tensors
from trainer import rng_state, set_rng_state

PEERS = Path(__file__).parent / "data" / "peer_checkpoints"
UNSIGNED_WIDE = {torch.uint16, torch.uint32, torch.uint64}


def test_a_checkpoint_holds_no_dtype_that_torch_2_5_cannot_save(workdir: Path) -> None:
    argv = shlex.split("--dataset shapes --max_images 32 --imsize 32 --g_conv_dim 8 --d_conv_dim 8 --z_dim 16 "
                       "--batch_size 4 --num_workers 0 --total_step 2 --log_step 1 --sample_step 1000 --attn_samples 0 "
                       "--use_tensorboard false --device cpu --version c --ema_decay 0.9 --ema_start 0")
    assert main(argv) == 0
    saved = torch.load(workdir / "models/c/2.pt", weights_only=True)
    tensors = list(flat_tensors(saved).values())
    assert len(tensors) > 50 and not {t.dtype for t in tensors} & UNSIGNED_WIDE


def test_the_random_state_round_trips_and_reads_the_uint32_key_of_older_files() -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = rng_state(torch.device("cpu"))
    expect = (np.random.rand(4), random.random(), torch.rand(4))
    for key in (state["numpy"][1], torch.from_numpy(state["numpy"][1].numpy().astype(np.uint32))):  # new, old
        np.random.seed(0), random.seed(0), torch.manual_seed(0)
        assert set_rng_state({**state, "numpy": [state["numpy"][0], key, *state["numpy"][2:]]}, torch.device("cpu"))
        got = (np.random.rand(4), random.random(), torch.rand(4))
        assert np.array_equal(got[0], expect[0]) and got[1] == expect[1] and torch.equal(got[2], expect[2])


def _lookup_before_2_6() -> dict:
    """How torch 2.5's weights-only unpickler finds an allow-listed global: by __module__ and __name__."""
    return {f"{f.__module__}.{f.__name__}": f for f in torch.serialization.get_safe_globals()}


@pytest.mark.parametrize("path", sorted(p for p in PEERS.rglob("*.pth")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_references_files_load_with_torch_2_5s_lookup(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._weights_only_unpickler as unpickler

    monkeypatch.setattr(unpickler, "_get_user_allowed_globals", _lookup_before_2_6)
    loaded = legacy.load_foreign(path)
    assert len(flat_tensors(loaded)) > 0


@pytest.mark.parametrize("script", ["other_torch.sh", "gpu_check.sh"])
def test_the_shell_scripts_parse(script: str) -> None:
    r = subprocess.run(["bash", "-n", str(Path(__file__).parent / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
