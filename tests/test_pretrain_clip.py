"""The captioned stills (make_stills) and the tiny CLIP pretrained on them (scripts/pretrain_clip.py):
determinism, captions that say what is drawn, weights that lss.load_clip reads, a loss that falls."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import lss
from conftest import ROOT

import pretrain_clip  # noqa: E402


def parse_caption(text: str) -> dict:
    """Caption -> the attributes it states (templates leave some out), read back with the caption vocabulary."""
    out = {}
    for name, phrases in lss.MOTION_PHRASES.items():
        if any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases):
            out.setdefault("motion", []).append(name)
    m = re.search(r"\b(long triangle|long pentagon|triangle|square|bar|pentagon)\b", text)
    out["shape"] = m.group(1) if m else None
    colours = [c for c in pretrain_clip.STILL_COLOURS if re.search(rf"\b{c}\b", text)]
    if colours:
        out["colour"] = colours
    m = re.search(r"\b(small|large)\b", text)
    if m:
        out["size"] = m.group(1)
    m = re.search(r"near the ((?:top |bottom )?(?:left|right)|top|bottom)\b|in the (centre)", text)
    if m:
        out["position"] = m.group(1) or m.group(2)
    return out


def test_stills_are_deterministic_and_seeded():
    a = pretrain_clip.make_stills(40, seed=3, workers=1, progress=False)
    b = pretrain_clip.make_stills(40, seed=3, workers=2, progress=False)  # chunking and workers do not matter
    c = pretrain_clip.make_stills(40, seed=4, workers=1, progress=False)
    assert a[0].shape == (40, 32, 32, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and a[2] != c[2]


def test_captions_say_what_is_drawn():
    images, attrs, captions = pretrain_clip.make_stills(300, seed=0, workers=1, progress=False)
    motions = set()
    for img, a, cap in zip(images, attrs, captions):
        p = parse_caption(cap)
        assert p.get("motion") == [a["motion"]], (cap, a)  # exactly one motion, the drawn one
        assert p["shape"] == a["shape"], (cap, a)
        for key in ("size", "position"):
            if key in p:
                assert p[key] == a[key], (cap, a, key)
        if "colour" in p:
            assert p["colour"] == [a["colour"]], (cap, a)
        motions.add(a["motion"])
        # the picture: the shape's pixels (full intensity) have the named colour, give or take the stills' noise ...
        rgb = np.array(pretrain_clip.STILL_COLOURS[a["colour"]]) * 255
        full = np.abs(img.astype(float) - rgb).max(-1) < 4 * 255 * pretrain_clip.STILL_NOISE
        assert full.sum() >= 2, cap  # a small shape late in "shrinking" covers 2-3 pixels
        # ... and sit in the named third of the frame (rows: top/middle/bottom, columns: left/centre/right)
        ys, xs = np.nonzero(full)
        row, col = [(r, c) for r, line in enumerate(pretrain_clip.POSITIONS) for c, name in enumerate(line)
                    if name == a["position"]][0]
        assert abs(ys.mean() / 32 * 3 - (row + 0.5)) < 1.0 and abs(xs.mean() / 32 * 3 - (col + 0.5)) < 1.0, cap
    assert motions == set(data.SYNTHETIC_CLASSES)
    assert len(set(captions)) > 150  # varied templates and phrasings


def test_a_trail_shows_the_path_a_static_shape_has_none():
    rng = np.random.default_rng(0)
    moving = data.render_synthetic_video(data.SYNTHETIC_CLASSES.index("move_sideways"), rng, 64, 48, trail=1.0)
    plain = data.render_synthetic_video(data.SYNTHETIC_CLASSES.index("move_sideways"), np.random.default_rng(0), 64,
                                        48, trail=0.0)
    def ghost_pixels(frame):  # dimmer than the shape, brighter than the background
        v = frame.max(-1)
        return ((v > 20) & (v < 200)).sum()
    for i in (0, 24, 47):  # the pre-roll gives the first frame its whole trail too
        assert ghost_pixels(moving[i]) > 20 and ghost_pixels(plain[i]) < ghost_pixels(moving[i]) / 3, i
    static = data.render_synthetic_video(0, np.random.default_rng(1), 64, 48, trail=1.0)
    assert np.array_equal(static[-1], data.render_synthetic_video(0, np.random.default_rng(1), 64, 48)[-1])


TINY = ["--stills", "768", "--heldout", "128", "--width", "64", "--layers", "1", "--text-width", "64",
        "--text-layers", "1", "--embed-dim", "32", "--batch-size", "64", "--warmup", "5", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "clip.pt"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_clip.py"), *TINY, "--steps", "60",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_weights_load_with_load_clip_and_the_loss_falls(tiny_clip):
    out, r = tiny_clip
    clip = lss.load_clip(str(out))  # OpenAI layout: the architecture is read off the weights
    assert (clip.cfg.image_resolution, clip.cfg.vision_width, clip.cfg.context_length, clip.cfg.embed_dim) == (32, 64, 16, 32)
    m = json.loads(out.with_suffix(".json").read_text())
    h = m["history"]
    assert h[-1]["loss"] < h[0]["loss"] - 0.5, h  # from ~ln 64 at step 0
    assert 0 <= m["after"]["image_to_text_r1"] <= 100 and m["after"]["retrieval_chance"] == pytest.approx(100 / 128)
    assert set(m["after"]["zero_shot"]) == {"motion", "shape", "colour", "size", "position"}
    assert "zero-shot colour" in r.stdout and "image->text R@1" in r.stdout


def test_an_existing_file_is_reused_not_retrained(tiny_clip):
    out, _ = tiny_clip
    before = out.stat().st_mtime_ns
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain_clip.py"), *TINY, "--steps", "60",
                        "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "exists" in r.stdout and out.stat().st_mtime_ns == before


def test_lss_runs_from_the_pretrained_tiny_clip(tiny_clip, tiny_synthetic, tmp_path):
    out, _ = tiny_clip
    run = tmp_path / "lss"
    r = subprocess.run([sys.executable, str(ROOT / "lss.py"), "--init", "clip", "--clip", str(out), "--dataset",
                        "synthetic", "--data", str(tiny_synthetic), "--out", str(run), "--size", "32",
                        "--local-size", "16", "--canvas", "32", "32", "--frames", "4", "--stride", "2",
                        "--local-frames", "2", "--local-views", "2", "--batch-size", "4", "--workers", "0",
                        "--max-steps", "2", "--test-clips", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    tau_s = 1 / lss.load_clip(str(out)).logit_scale.exp().item()  # auto temperatures: the CLIP's own scale
    assert ck["config"]["tau_s"] == pytest.approx(tau_s) and ck["config"]["tau_t"] == pytest.approx(0.4 * tau_s)
    assert ck["config"]["templates"] == "synthetic"  # --templates auto


def test_picture_of_the_stills(tmp_path):
    from PIL import Image
    out = pretrain_clip.stills_picture(str(tmp_path / "s.png"), n=4)
    img = Image.open(out)
    img.verify()
    assert Image.open(out).size[0] > 4 * 128


def test_templates_auto_follow_the_dataset_and_synthetic_classes_read_as_captions():
    for dataset, want in (("kinetics", "kinetics"), ("ucf101", "ucf101"), ("hmdb51", "ucf101"),
                          ("synthetic", "synthetic"), ("folder", "kinetics")):
        assert lss.parse_args(["--dataset", dataset, "--init", "random"]).templates == want
    assert lss.parse_args(["--templates", "single", "--init", "random"]).templates == "single"
    assert len(set(lss.UCF101_TEMPLATES)) == 48 and "a video of the person doing {}." in lss.UCF101_TEMPLATES
    assert lss.class_to_text("move_up") == "moving up" and lss.class_to_text("ApplyEyeMakeup") == "apply eye makeup"
    # every synthetic prompt uses only words the captions use
    vocab = {w for t in pretrain_clip.CAPTION_TEMPLATES for w in t.replace(",", " ").split() if "{" not in w}
    vocab |= {w for p in lss.MOTION_PHRASES.values() for x in p for w in x.split()}
    vocab |= {"triangle", "square", "bar", "pentagon"}
    for c in data.SYNTHETIC_CLASSES:
        for t in lss.SYNTHETIC_TEMPLATES:
            assert set(t.format(lss.class_to_text(c)).split()) <= vocab, t
