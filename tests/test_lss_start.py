"""scripts/lss_start.py, the InfoNCE-pretrained start for LSS: what it writes is what lss.py and eval_linear.py read
(clip.pt -> lss.py's VideoViT at step 0 == checkpoint.pt's backbone, whose feature is the one InfoNCE trained), only
the image tower is trained, and a resumed run equals an uninterrupted one."""
import subprocess
import sys
import warnings

import pytest
import torch

import lss
import training
from conftest import ROOT, load_ckpt as load

import lss_start  # noqa: E402

TINY = ["--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64", "--text-layers", "1",
        "--size", "32", "--canvas", "32", "32", "--frames", "4", "--stride", "2", "--head-hidden", "64",
        "--batch-size", "4", "--workers", "0", "--log-every", "1", "--epochs", "1"]


def start(root, out, *extra, check=True, dataset="synthetic"):
    r = subprocess.run([sys.executable, "scripts/lss_start.py", "--dataset", dataset, "--data", str(root),
                        "--out", str(out), *TINY, *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r



@pytest.fixture(scope="module")
def runs(tiny_synthetic, tmp_path_factory):
    """The same seed trained for 0 steps (the random start) and for 2 steps."""
    d = tmp_path_factory.mktemp("lss_start")
    start(tiny_synthetic, d / "s0", "--epochs", "0")
    start(tiny_synthetic, d / "s2", "--max-steps", "2")
    return d / "s0", d / "s2"


def test_clip_pt_is_what_lss_py_starts_from_and_checkpoint_holds(runs):
    _, out = runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # load_clip warns on any missing or unexpected key
        clip = lss.load_clip(str(out / "clip.pt"))
    assert (clip.cfg.vision_width, clip.cfg.vision_layers, clip.cfg.vision_patch_size, clip.cfg.embed_dim,
            clip.cfg.image_resolution, clip.cfg.text_width) == (64, 2, 8, 32, 32, 64)
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["method"] == "lss" and ckpt["step"] == 2 and ckpt["config"]["trained_by"] == "scripts/lss_start.py"
    # build_networks' VideoViT.from_clip on clip.pt (lss.py --init clip at step 0) == the checkpoint's backbone
    vit = lss.VideoViT.from_clip(clip.visual, ckpt["config"]["cls_mode"], ckpt["config"]["frames"])
    backbone = {k.removeprefix("vit."): v for k, v in ckpt["backbone"].items()}
    assert backbone.keys() == vit.state_dict().keys()
    assert all(torch.equal(backbone[k], v) for k, v in vit.state_dict().items())


def test_the_probed_feature_is_the_trained_one(runs):
    """eval_linear.py's backbone (lss.build_backbone of the checkpoint config, projected feature) computes exactly
    what InfoNCE trained: the image tower's embedding averaged over frames."""
    _, out = runs
    ckpt = load(out / "checkpoint.pt")
    backbone = lss.Backbone(ckpt["config"], feature="proj").eval()
    backbone.load_state_dict(ckpt["backbone"])
    clip = lss.load_clip(str(out / "clip.pt")).eval()
    x = torch.rand(3, 3, 4, 32, 32)  # (B, C, T, H, W) in [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), lss_start.clip_features(clip.visual, x), atol=1e-5, rtol=1e-5)
    # and the probe's default feature is the CLS one lss.py checkpoints are probed on
    assert lss.build_backbone(ckpt["config"]).feature == "cls"


def test_only_the_image_tower_is_trained(runs):
    s0, s2 = (load(r / "clip.pt") for r in runs)
    assert s0.keys() == s2.keys()
    visual = [k for k in s0 if k.startswith("visual.")]
    text = [k for k in s0 if not k.startswith("visual.")]
    assert visual and text
    assert all(torch.equal(s0[k], s2[k]) for k in text)  # same seed, same random text tower, untouched
    assert sum(not torch.equal(s0[k], s2[k]) for k in visual) > len(visual) // 2  # most image weights moved


def test_resume_is_exact(tiny_synthetic, runs, tmp_path):
    start(tiny_synthetic, tmp_path / "a", "--max-steps", "1")
    start(tiny_synthetic, tmp_path / "a", "--max-steps", "2")  # resumes mid-epoch at step 1
    a, b = load(tmp_path / "a" / "checkpoint.pt"), load(runs[1] / "checkpoint.pt")  # b: 2 steps uninterrupted
    assert a["step"] == b["step"] == 2
    for key in ("clip", "head"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_bad_flags_say_what_to_do(tiny_synthetic, tmp_path):
    cfg = training.parse_config(lss_start.Config, ["--size", "30"], "")  # refused before anything is made
    with pytest.raises(SystemExit, match="--size 30 is not a multiple of --patch 8"):
        lss_start.train(cfg)
    r = start(tmp_path / "no-such-dir", tmp_path / "d", check=False, dataset="folder")
    assert r.returncode != 0 and "no-such-dir" in r.stderr + r.stdout and "Traceback" not in r.stderr
    r = start(tiny_synthetic, tmp_path / "e", "--head", "linear", check=False)
    assert r.returncode != 0 and "--head 'linear': use mlp or none" in r.stderr + r.stdout
    (tmp_path / "f").mkdir()
    torch.save({"method": "lss", "config": {}, "step": 5}, tmp_path / "f" / "checkpoint.pt")  # an lss.py run's --out
    r = start(tiny_synthetic, tmp_path / "f", check=False)
    assert r.returncode != 0 and "was not written by scripts/lss_start.py; use another --out" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_head_none_trains_the_joint_space_and_a_resume_cannot_switch_heads(tiny_synthetic, tmp_path):
    start(tiny_synthetic, tmp_path / "n0", "--head", "none", "--epochs", "0")
    start(tiny_synthetic, tmp_path / "n", "--head", "none", "--max-steps", "2")  # step 0's lr is 0 (warmup)
    s0, s1 = load(tmp_path / "n0" / "clip.pt"), load(tmp_path / "n" / "clip.pt")
    ckpt = load(tmp_path / "n" / "checkpoint.pt")
    assert ckpt["head"] == {} and ckpt["config"]["start_config"]["head"] == "none"  # nothing to discard
    assert not torch.equal(s0["visual.proj"], s1["visual.proj"])  # the projection into the joint space is trained
    r = start(tiny_synthetic, tmp_path / "n", "--head", "mlp", "--max-steps", "3", check=False)
    assert r.returncode != 0 and "--head 'none' (checkpoint) vs 'mlp' (now)" in r.stderr + r.stdout
