import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One torch thread per pytest-xdist worker (the suite runs with -n 2 on 2 cores); two without xdist.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder that is also the working directory (runs write ./models, ./samples, ...)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def no_torch_fidelity(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-fidelity as if it were not installed: the package and every submodule already imported unimportable."""
    for name in [m for m in sys.modules if m.startswith("torch_fidelity.")] + ["torch_fidelity"]:
        monkeypatch.setitem(sys.modules, name, None)
