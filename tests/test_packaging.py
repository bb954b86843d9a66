"""Every module the scripts and tests import is declared in pyproject.toml, where it is needed: the main scripts'
in `dependencies` (so `pip install -e .` alone runs them), the study scripts' there or in `study`, the tests' there
or in `test`. .ci/run checks the same thing for real, in a fresh virtual environment."""
import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import lss
from conftest import ROOT

# import name -> distribution name, for every third-party module the repository may import
DISTRIBUTION = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "einops": "einops", "av": "av",
                "tqdm": "tqdm", "PIL": "pillow", "regex": "regex", "ftfy": "ftfy", "scipy": "scipy", "matplotlib": "matplotlib",
                "pytest": "pytest", "open_clip": "open_clip_torch", "torchcodec": "torchcodec", "decord": "decord",
                "cv2": "opencv-python-headless"}


def declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")  # noqa: E731
    extras = {k: {name(r) for r in v} for k, v in meta["optional-dependencies"].items()}
    return {name(r) for r in meta["dependencies"]}, extras


def imported_modules(path: Path) -> set:
    """Top-level names of `import x` / `from x import ...` anywhere in the file, and of pytest.importorskip("x")."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args
              and isinstance(node.args[0], ast.Constant)):
            mods.add(node.args[0].value.split(".")[0])
    local = {p.stem for d in (ROOT, ROOT / "scripts", ROOT / "tests") for p in d.glob("*.py")}
    return {m for m in mods if m not in sys.stdlib_module_names and m not in local}


def test_every_import_is_declared_where_it_is_needed():
    deps, extras = declared()
    groups = [(sorted(ROOT.glob("*.py")), deps),
              (sorted(f for f in (ROOT / "scripts").glob("*.py") if f.name != "bench.py"), deps | extras["study"]),
              ([ROOT / "scripts" / "bench.py"], deps | extras["study"] | extras["peers"]),  # optional, in try blocks
              (sorted((ROOT / "tests").glob("*.py")), deps | extras["test"])]
    missing = []
    for files, allowed in groups:
        for f in files:
            for m in imported_modules(f):
                dist = DISTRIBUTION.get(m)
                if dist is None or dist.lower().replace("_", "-") not in allowed:
                    missing.append(f"{f.relative_to(ROOT)} imports {m} ({dist or 'unknown distribution'})")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


def test_the_bpe_vocabulary_comes_from_a_runtime_dependency():
    deps, _ = declared()
    assert "clip-anytorch" in deps
    shipped = [f for f in importlib.metadata.files("clip-anytorch") if f.name == lss.BPE_FILE]
    assert len(shipped) == 1
    assert Path(lss.find_bpe_vocab()).resolve() == Path(shipped[0].locate()).resolve()


def test_the_scan_sees_an_undeclared_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nimport cv2\nfrom torch import nn\n\ndef g():\n    import pytest\n    pytest.importorskip('decord')\n")
    assert imported_modules(f) == {"cv2", "torch", "pytest", "decord"}
