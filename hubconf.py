"""torch.hub entry points: a trained SAGAN in one line.

    G = torch.hub.load("<owner>/<repo>", "generator", "hf://USER/REPO")            # from GitHub and the Hub
    G = torch.hub.load("path/to/checkout", "generator", "models/NAME", source="local")  # offline
    images = G.generate(16, labels=None, seed=0)                                   # (16, 3, H, W) in [0, 1]

`path` is a run folder (`models/NAME`: its latest checkpoint, or `which`), a folder written by export.py, or
a Hugging Face Hub repository `hf://USER/REPO[/SUBFOLDER][@REVISION]` (fetched by huggingface_hub, cached).
Every form goes through `checkpoints.load_generator` / `load_discriminator`, as `main.py --train false` does.
"""

dependencies = ["torch"]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from checkpoints import load_discriminator, load_generator  # noqa: E402


def generator(path: str, device: str | torch.device = "cpu", which: str = "latest") -> nn.Module:
    """The sampling generator (the EMA one when saved) in eval mode on `device`; `G.generate(n, labels, seed)`
    draws images in [0, 1], `G(z, y)` in [-1, 1]."""
    return load_generator(path, which, device).G


def discriminator(path: str, device: str | torch.device = "cpu", which: str = "latest") -> nn.Module:
    """D in eval mode on `device`: `D(x, y)` gives one logit per image in [-1, 1] (per pack of `D.cfg.d_pack` images,
    stacked by `sagan_models.pack_images`, for a D trained with --d_pack)."""
    return load_discriminator(path, which, device)
