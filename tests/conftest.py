"""Shared fixtures: small encoded videos and a tiny synthetic dataset, generated once per test session."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # the tests import the tools too (bench, reencode, show, ...)

import data  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu need CUDA: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (run `pytest -m gpu` on a CUDA machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Scripts generate the synthetic dataset into a cache dir; tests must never touch the user's ~/.cache.
    os.environ["NANOVIDEOSSL_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def load_ckpt(path):
    """A checkpoint as the scripts write it: tensors and plain containers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


class HostReads:
    """Counts, inside a `with`, every read of a tensor's value by the host made from a method file (cvrl.py, lss.py,
    training.py): .item(), .cpu(), .tolist(), .numpy(), bool(), float(), int(). On a GPU each is a sync that empties
    the device's queue; a training step should make none (the loop reads its logs every --log-every steps). Reads
    inside data.py are not counted: the augmentation draws its parameters on the host, from a CPU generator."""
    NAMES = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")
    FILES = ("cvrl.py", "lss.py", "training.py")

    def __enter__(self):
        import traceback
        self.calls, self._saved = [], {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for name, fn in self._saved.items():
            def counted(t, *a, _fn=fn, _name=name, **k):
                where = traceback.extract_stack(limit=2)[0]
                if os.path.basename(where.filename) in self.FILES:
                    self.calls.append(f"{_name} at {os.path.basename(where.filename)}:{where.lineno}")
                return _fn(t, *a, **k)
            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, fn)


def textured_frames(n, h=48, w=64, seed=0):
    """Frames that differ from each other in every pixel block, so a wrong frame can never pass as the right one."""
    rng = np.random.default_rng(seed)
    base = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = np.roll(base, shift=3 * i, axis=1).copy()
        f[..., 0] = (i * 7) % 256
        frames[i] = f
    return frames


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny synthetic dataset (8 classes, 4 train / 2 test videos per class, 32 px, 24 frames)."""
    root = tmp_path_factory.mktemp("synthetic") / "syn"
    data.make_synthetic(root, data.SyntheticWorld(train_per_class=4, test_per_class=2, video_size=32, video_frames=24,
                                              fps=8), progress=False)
    return root
