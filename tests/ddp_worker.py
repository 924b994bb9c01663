"""Run by tests/test_scale.py under `torchrun --nproc_per_node 2`: main.main(argv) with two probes.

- After every training iteration the flattened parameters of G and D and D's buffers (spectral-norm u
  and v) are all-gathered and compared across ranks, and each rank records the sum of the first real batch it drew (ranks must differ).
- An audit hook records every file or folder this process creates or writes under the working folder.
Each rank then writes report_<rank>.json into $REPORT_DIR (outside the run folders).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CWD = Path.cwd().resolve()
writes: list[str] = []


def audit(event: str, args: tuple) -> None:
    path = None
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        path = args[0]
    elif event in ("os.mkdir", "os.remove"):
        path = args[0]
    elif event in ("os.rename", "os.replace"):
        for p in args[:2]:
            audit("os.mkdir", (p,))
    if path is not None and isinstance(path, (str, os.PathLike)):
        p = Path(os.fsdecode(path))
        p = (CWD / p) if not p.is_absolute() else p
        if str(p.resolve()).startswith(str(CWD)):
            writes.append(str(p.resolve().relative_to(CWD)))


sys.addaudithook(audit)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import main  # noqa: E402
from trainer import Trainer  # noqa: E402

equal_after_step: list[bool] = []
first_batch_sum: list[float] = []
original_iteration = Trainer.iteration


def checked_iteration(self: Trainer, batches):  # type: ignore[no-untyped-def]
    def recording(it):  # type: ignore[no-untyped-def]
        for x, y in it:
            if not first_batch_sum:
                first_batch_sum.append(float(x.sum()))
            yield x, y

    out = original_iteration(self, recording(batches) if not first_batch_sum else batches)
    # D's spectral-norm u and v too: DDP does not broadcast D's buffers (broadcast_buffers=False), so they must stay
    # bit-equal by construction
    vec = torch.cat([p.detach().flatten() for p in [*self.G.parameters(), *self.D.parameters(), *self.D.buffers()]])
    gathered = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, vec)
    equal_after_step.append(all(torch.equal(gathered[0], v) for v in gathered))
    return out


Trainer.iteration = checked_iteration

code = main.main(sys.argv[1:])
rank = int(os.environ["RANK"])
report = {"exit": code, "equal_after_step": equal_after_step, "first_batch_sum": first_batch_sum, "writes": sorted(set(writes))}
Path(os.environ["REPORT_DIR"], f"report_{rank}.json").write_text(json.dumps(report))
