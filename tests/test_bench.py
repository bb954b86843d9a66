"""scripts/bench.py (smoke run, FLOP counter) and scripts/reencode.py. No timing assertions: the numbers
depend on the machine and its load; only structure and exact counts are checked."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
import torch.nn as nn

import cvrl
import data
from conftest import ROOT

import bench  # noqa: E402
import reencode  # noqa: E402


# ----------------------------------------------------------------------------------------------------- bench.py

def test_bench_smoke_writes_json_and_markdown(tmp_path):
    md, js = tmp_path / "B.md", tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--preset", "smoke", "--out-md", str(md),
                        "--out-json", str(js), "--workers", "2", "--video-cache", str(tmp_path / "videos")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads(js.read_text())
    assert run["preset"] == "smoke"
    assert {"model", "asrun", "pipeline", "augment", "reencode", "decoders"} <= set(run)
    # 1. every model has every variant, each measured, skipped or with its error recorded
    assert [m["kind"] for m in run["model"]["models"]] == ["cvrl", "lss"]
    for m in run["model"]["models"]:
        names = [row["variant"] for row in m["rows"]]
        assert names[:2] == ["fp32", "bf16 autocast"] and any(" + fused " in n for n in names)
        assert any("channels_last_3d" in n for n in names) == (m["kind"] == "cvrl")
        for row in m["rows"]:
            assert "skipped" in row or "error" in row or row["clips_per_s"] > 0
        assert m["rows"][0]["clips_per_s"] > 0  # fp32 always runs
        if not torch.cuda.is_available():
            assert all(row.get("mfu") is None for row in m["rows"])  # no MFU without a GPU peak
    assert abs(run["model"]["flop_check"][0]["rel_diff"]) < 0.03
    # 2. every format measured; decoded frames per clip come from read_clips' stats
    p = run["pipeline"]
    assert len(p["formats"]) == 3 and all(f["frames_decoded_per_clip"] >= 8 for f in p["formats"])
    assert all(x["speedup"] > 0 for x in p["pairs"]) and 0 <= p["data_wait"][0]["data_wait"] <= 1
    assert run["augment"]["rows"][0]["speedup"] > 0
    assert [r["ops"] for r in run["augment"]["rows"]] == list(bench.AUGMENT_OPS)  # blur and solarize timed too
    # 4. every re-encode variant written, exact, measured; an all-intra format decodes nothing before a clip's start
    src, re = run["reencode"]["variants"][0], run["reencode"]["variants"][1:]
    assert src.get("source") and src["clips_per_s_1core"] > 0 and src["psnr_db"] is None
    assert [v["variant"] for v in re] == [v.name for v in bench.PRESETS["smoke"]["reencode_variants"]]
    for v in re:
        assert v["exact"] and v["bytes"] > 0 and v["clips_per_s_1core"] > 0 and v["pairs_per_s_1core"] > 0
        assert min(v["width"], v["height"]) == 64 and v["psnr_db"] > 20
        assert 8 <= v["frames_decoded_per_clip"] <= 8 * 2 - 1 + v["max_key_gap"]
    mjpeg = next(v for v in re if v["codec"] == "mjpeg")
    assert mjpeg["max_key_gap"] == 1 and 8 <= mjpeg["frames_decoded_per_clip"] <= 8 * 2 - 1  # the clip's span at most
    # 5. decoders: ours and the limit return a sequential decode's frames, and ours decodes no more frames than the
    # limit (keyframe to last wanted frame), give or take the 2-frame slack of a seek by timestamp; fewer where it
    # skips B-frames, never fewer than the clip's own frames
    dec = run["decoders"]
    assert [f["format"] for f in dec["formats"]] == [f.name for f in bench.PRESETS["smoke"]["formats"]]
    assert "whole-video PyAV" in dec["peers"]
    for f in dec["formats"]:
        assert f["exact"]["ours"] and f["exact"]["limit"] and f["exact"]["whole-video PyAV"], f
        for kind in ("singles", "pairs"):
            assert f[kind]["ours"] > 0 and f[kind]["limit"] > 0
            d = f[f"{kind}_decoded"]
            assert 8 <= d["ours"] <= d["limit"] + 2, (f["format"], kind, d)
    # markdown: generated, honest about the missing GPU, carries its data for the next run to merge
    text = md.read_text()
    assert "# Benchmarks" in text and "python scripts/bench.py --preset gpu" in text
    assert "### 4. Re-encode formats" in text and "### 5. Decoders" in text and "### 1b. Step as run" in text
    assert "How FLOPs are counted" in text
    if not torch.cuda.is_available():
        assert bench.PENDING in text
    assert bench.previous_runs(md)["smoke"]["preset"] == "smoke"


def test_bench_step_as_run_and_loader_row(tmp_path):
    """Section 1b at the smoke preset's sizes (tiny networks, a few steps, 86x64 videos), on the CPU: cvrl.train_step
    and lss.train_step as run from a host batch, section 1's step beside each, and the CVRL step fed by the real
    training loader; then the markdown it renders, with the GPU rows still pending."""
    out = bench.bench_asrun(bench.PRESETS["smoke"], torch.device("cpu"), tmp_path / "videos", lambda s: None)
    assert [m["kind"] for m in out["models"]] == ["cvrl", "lss"] and out["canvas"] == [64, 86]
    for m in out["models"]:
        rows = {r["row"]: r for r in m["rows"]}
        assert sorted(rows) == ["as run", "model only"] and len(m["rows"]) == 2
        for r in m["rows"]:
            assert "error" not in r, r
            assert r["clips_per_s"] > 0 and r["clips_per_s"] == pytest.approx(2 * r["videos_per_s"])
            assert r["mfu"] is None  # no peak FLOPs on a CPU
        assert rows["as run"]["variant"] == m["kind"] + ".train_step" and "not compiled" in rows["as run"]["notes"]
        assert rows["model only"]["variant"] == "fp32"  # what the scripts run on a CPU (--amp auto: off)
    lss_row = out["models"][1]
    assert any("random unit vectors" in n for n in lss_row["rows"][0]["notes"])
    assert lss_row["asrun_train_gflop_per_video"] > lss_row["train_gflop_per_video"]  # the local views
    (loader,) = out["loader"]
    assert "error" not in loader, loader
    assert loader["clips_per_s"] > 0 and 0 <= loader["data_wait"] <= 1
    assert loader["workers"] == max(1, len(os.sched_getaffinity(0)) - 2) and loader["steps_timed"] >= 4
    # every variant the section matches against section 1 is one section 1 measures (on a CPU compiled steps as run
    # are not timed by default; section 1's compiled CVRL row there is channels_last_3d, which cvrl.py leaves off)
    for kind in ("cvrl", "lss"):
        for dev, compiled in (("cpu", False), ("cuda", False), ("cuda", True)):
            names = [v["name"] for v in bench.variants(kind, True, dev == "cuda")]
            assert bench.matching_variant(kind, torch.device(dev), compiled)["name"] in names
    env = dict(date="d", command="c", device="CPU only (no GPU visible)", cpu="x", cpu_cores=2, load_avg=[0.0],
               torch="t", torchvision="tv", av="a", cudnn=None, cuda=None, git="", python="3")
    md = tmp_path / "B.md"
    bench.write_markdown(md, {"smoke": dict(preset="smoke", env=env, timing={}, asrun=out)})
    text = md.read_text()
    assert "### 1b. Step as run" in text and "**Loader row**" in text and "random unit vectors" in text
    assert "Step as run on a GPU — pending (no GPU lent yet)" in text


def test_markdown_keeps_other_presets(tmp_path):
    md = tmp_path / "B.md"
    env = dict(date="d", command="c", device="CPU only (no GPU visible)", cpu="x", cpu_cores=2, load_avg=[0.0],
               torch="t", torchvision="tv", av="a", cudnn=None, cuda=None, git="", python="3")
    bench.write_markdown(md, {"cpu": dict(preset="cpu", env=env, timing={})})
    runs = bench.previous_runs(md)
    runs["gpu"] = dict(preset="gpu", env={**env, "device": "NVIDIA H100 80GB HBM3"}, timing={})
    bench.write_markdown(md, runs)
    text = md.read_text()
    assert "## Preset `cpu`" in text and "## Preset `gpu` — NVIDIA H100" in text and bench.PENDING not in text


def test_merge_combines_partial_runs(tmp_path):
    """--merge: separate --only / --model-kind calls of one preset become one section; model rows of both calls are
    kept, notes are rendered, and runs of different presets are refused."""
    env = dict(date="d", command="c", device="NVIDIA H100 80GB HBM3", cpu="x", cpu_cores=16, load_avg=[0.0],
               torch="t", torchvision="tv", av="a", cudnn=None, cuda=None, git="", python="3")
    row = dict(variant="bf16", first_step_s=1.0, step_s=0.1, steps_per_s=10.0, clips_per_s=640.0, tflops=100.0,
               mfu=0.1, peak_mem_gb=20.0)
    model = lambda name: dict(peak_flops_bf16=989e12, bf16_base=True, flop_check=[], models=[dict(  # noqa: E731
        name=name, kind="cvrl", fwd_gmac_per_clip=1.0, train_gflop_per_clip=6.0, batch_clips=64, batch_source="x",
        rows=[row])])
    # gpu_check.sh's 2c: the compiled step as run of MODEL-A (its model-only row: section 1's compiled one, here
    # only with the fused optimizer) and the loader row
    asrun_row = dict(row="as run", variant="cvrl.train_step, --compile", compiled=True, videos_per_step=32,
                     first_step_s=50.0, step_s=0.2, steps_per_s=5.0, videos_per_s=160.0, clips_per_s=320.0,
                     tflops=80.0, mfu=0.08, peak_mem_gb=30.0, graph_breaks=0, notes=["0 graph break(s), 1 graph(s)"])
    asrun = dict(peak_flops_bf16=989e12, flop_rule=bench.FLOP_RULE, canvas=[256, 342], host="pinned host memory",
                 models=[dict(name="MODEL-A", kind="cvrl", rows=[asrun_row], notes=[])],
                 loader=[dict(name="MODEL-A", step="cvrl.train_step, --compile", format="FORMAT", workers=14,
                              videos_per_step=32, steps_timed=28, clips_per_s=123.0, data_wait=0.42)])
    compiled = dict(row, variant="bf16 + channels_last_3d + torch.compile + fused SGD", clips_per_s=777.0)
    parts = [dict(preset="gpu", env=env, timing=dict(warmup=1, windows=1, per_window=1), model=model("MODEL-A")),
             dict(preset="gpu", env=env, timing={}, model=model("MODEL-B")),
             dict(preset="gpu", env=env, notes=["NOTE-ONE"], asrun=asrun)]
    parts[0]["model"]["models"][0]["rows"].append(compiled)
    files = []
    for i, p in enumerate(parts):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(p))
    md = tmp_path / "B.md"
    assert bench.main(["--merge", *map(str, files), "--out-md", str(md)]) == 0
    text = md.read_text()
    assert "**MODEL-A**" in text and "**MODEL-B**" in text and "- NOTE-ONE" in text and bench.PENDING not in text
    assert "| MODEL-A | as run: cvrl.train_step, --compile | 32 |" in text and "0 graph break(s)" in text
    assert "| MODEL-A | model only: bf16 + channels_last_3d + torch.compile + fused SGD (section 1) | 32 |" in text
    assert "**777.00**" in text and "**123.00** | **42%** | 320.00 |" in text
    assert "pending (no GPU lent yet)" not in text  # a GPU section has the step as run now
    files[1].write_text(json.dumps(dict(parts[1], preset="cpu")))
    with pytest.raises(SystemExit, match="one preset"):
        bench.main(["--merge", *map(str, files), "--out-md", str(md)])


def test_flop_counter_single_conv_is_exactly_two_flops_per_mac():
    conv = lambda: nn.Conv3d(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False)  # noqa: E731
    macs = bench.count_macs(conv, (1, 3, 16, 32, 32))
    assert macs == 64 * (8 * 16 * 16) * (3 * 5 * 7 * 7)  # Cout x output positions x (Cin x kernel volume)
    lin = bench.count_macs(lambda: nn.Linear(768, 3072), (4, 197, 768))
    assert lin == 4 * 197 * 768 * 3072


def test_flop_counter_matches_analytic_r3d50():
    # perf.md §1: R3D-50 (CVRL), 16x224^2 -> 45.52 GMAC forward (convs only; BN, ReLU, pooling not counted)
    build, shape = lambda: cvrl.build_encoder("r3d50"), (1, 3, 16, 224, 224)
    macs = bench.count_macs(build, shape)
    assert macs / 1e9 == pytest.approx(45.5, rel=0.03)
    # its stem: 3 -> 64 channels, kernel 5x7x7, output 8x112x112 (perf.md: 4.72 GMAC)
    stem = bench.first_conv_macs(build, shape)
    assert stem == 64 * (8 * 112 * 112) * (3 * 5 * 7 * 7)
    # the training FLOPs convention: forward x 2 FLOPs per MAC, backward = 2 x forward without the stem's input
    # gradient (the clip needs none): 263.7 GFLOP per clip, not the 6 x 45.5 = 273.2 of the earlier rule
    assert bench.train_flops_per_clip(dict(kind="cvrl"), macs, stem) == 6 * macs - 2 * stem
    assert bench.train_flops_per_clip(dict(kind="lss"), macs, stem) == 8 * macs - 2 * stem  # + the teacher's fwd
    m = dict(kind="cvrl", arch="r3d50", frames=16, size=224, head_hidden=2048)
    assert bench.train_flops_per_clip(m, bench.fwd_macs(m), bench.fwd_macs(m, stem=True)) / 1e9 == \
        pytest.approx(263.7, abs=0.1)
    # the ViT's first convolution is its patch embedding, applied to each of the T frames
    vit = dict(kind="lss", width=64, layers=1, heads=1, patch=8, frames=2, size=32, out_dim=32)
    assert bench.fwd_macs(vit, stem=True) == 2 * (4 * 4) * 64 * (3 * 8 * 8)


def test_flop_counter_counts_attention_on_meta():
    # On the meta device SDPA decomposes into bmm, so the attention matmuls are counted (CPU's fused SDPA kernel is
    # not). One divided space-time block, T=1 frame, width 64, 1 head, 16 px patches: every MAC written out.
    from lss import VideoViT
    for size in (32, 64):
        N = (size // 16) ** 2  # patches; spatial attention sees L = N + 1 tokens (with the CLS)
        L = N + 1
        D = 64
        expected = (N * 3 * 16 * 16 * D                      # patchify conv
                    + N * (3 * D * D + D * D + D * D)        # temporal qkv, out_proj, temporal_fc (patches only)
                    + N * 2 * 1 * 1 * D                      # temporal attention over T = 1 (QK^T and AV)
                    + L * (3 * D * D + D * D)                # spatial qkv, out_proj
                    + 2 * L * L * D                          # spatial attention QK^T and AV
                    + L * 2 * D * 4 * D                      # MLP
                    + D * 32)                                # proj of the (frame-averaged) CLS
        got = bench.count_macs(lambda: VideoViT(size, 16, D, 1, 1, 32, num_frames=1), (1, 1, 3, size, size))
        assert got == expected


# ----------------------------------------------------------------------------------------------------- reencode

def _moving(n, h, w, seed=0):
    """Smooth content moving over time (realistic GOP structure, unlike per-pixel noise)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return np.stack([np.roll(base, i, axis=1)[:h, :w] for i in range(n)])


def _keyframe_packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [i for i, p in enumerate(c.demux(s)) if p.size and p.is_keyframe]


@pytest.fixture
def source_tree(tmp_path):
    src = tmp_path / "src"
    (src / "ClassA").mkdir(parents=True)
    (src / "ClassB").mkdir(parents=True)
    frames = _moving(90, 96, 128)
    data.write_video(src / "ClassA" / "v_a.mp4", frames, 30, options={"crf": "23"})  # x264 default keyint 250
    data.write_video(src / "ClassA" / "v_b.avi", frames[:75], 25, codec="mpeg4", options={"g": "300"})
    data.write_video(src / "ClassB" / "v_c.webm", frames[:40], 20, codec="libvpx-vp9")
    (src / "ClassB" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (src / "trainlist01.txt").write_text("ClassA/v_a.mp4 1\n")
    return src


def test_reencode_cli(tmp_path, source_tree):
    dst = tmp_path / "dst"
    before = {p: p.read_bytes() for p in source_tree.rglob("*") if p.is_file()}
    cmd = [sys.executable, str(ROOT / "scripts" / "reencode.py"), "--src", str(source_tree), "--dst", str(dst),
           "--short-side", "64", "--gop", "8", "--workers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # one unreadable input -> status 1, listed with its path
    assert "3 re-encoded" in r.stdout and "1 unreadable" in r.stdout
    assert "BROKEN" in r.stdout and "broken.mp4" in r.stdout
    # the source is untouched; names and layout are kept; split files are copied
    assert {p: p.read_bytes() for p in source_tree.rglob("*") if p.is_file()} == before
    assert (dst / "trainlist01.txt").read_text() == "ClassA/v_a.mp4 1\n"
    assert not (dst / "ClassB" / "broken.mp4").exists()
    for name, n_src in [("ClassA/v_a.mp4", 90), ("ClassA/v_b.avi", 75), ("ClassB/v_c.webm", 40)]:
        out, src = dst / name, source_tree / name
        info, src_info = data.probe(out), data.probe(src)
        assert min(info.width, info.height) == 64 and info.width % 2 == 0  # 128x96 -> 86x64 (even)
        assert info.width == 86
        assert info.num_frames == n_src  # every frame kept
        assert info.fps == pytest.approx(src_info.fps)
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.name == "h264" and not c.streams.audio
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        keys = _keyframe_packets(out)
        assert keys[0] == 0 and max(np.diff(keys + [n_src])) <= 8  # a keyframe at least every --gop frames
        # read_frames works and finds the right frames (the content moves one pixel per frame to the left)
        clip = data.read_frames(out, [0, n_src // 2, n_src - 1])
        ref = data.read_frames(src, [0, n_src // 2, n_src - 1], size=(64, 86))
        assert clip.shape == (3, 64, 86, 3)
        # same frames, up to scaling and re-encoding (two lossy codecs at 64 px: ~10-12 of 255 on average), and
        # far closer to them than to the same frames in another order
        err = (clip.float() - ref.float()).abs().mean()
        assert err < 14 and err < 0.7 * (clip.float() - ref.flip(0).float()).abs().mean(), (name, err)
    # the source's long GOP is gone: a seek in the middle now decodes at most a GOP
    stats = {}
    data.read_frames(dst / "ClassA" / "v_a.mp4", [60], stats=stats)
    assert stats["decoded"] <= 8 + 2
    # resumable: a second run keeps the finished outputs
    mtimes = {p: p.stat().st_mtime_ns for p in dst.rglob("*.*")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "0 re-encoded, 3 already done" in r.stdout, r.stdout + r.stderr
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.*")} == mtimes


def test_reencode_redoes_a_broken_output_and_refuses_dst_inside_src(tmp_path, source_tree):
    dst = tmp_path / "dst"
    (dst / "ClassA").mkdir(parents=True)
    (dst / "ClassA" / "v_a.mp4").write_bytes(b"half-written")  # e.g. a copy that was interrupted
    res = reencode.reencode_dataset(source_tree, dst, short_side=64, gop=8, workers=1, progress=False)
    assert str(source_tree / "ClassA" / "v_a.mp4") in res["ok"]
    assert data.probe(dst / "ClassA" / "v_a.mp4").num_frames == 90
    assert [p.endswith("broken.mp4") for p in res["failed"]] == [True]
    assert not list(dst.rglob(".*partial"))  # no temporary files left behind
    with pytest.raises(data.DatasetError, match="outside"):
        reencode.reencode_dataset(source_tree, source_tree / "out", workers=1, progress=False)
    with pytest.raises(data.DatasetError, match="outside"):
        reencode.reencode_dataset(source_tree, source_tree, workers=1, progress=False)


def test_reencode_video_keeps_size_when_asked(tmp_path, source_tree):
    out = tmp_path / "same.mp4"
    r = reencode.reencode_video(source_tree / "ClassA" / "v_a.mp4", out, short_side=None, gop=16)
    assert (r["width"], r["height"], r["frames"]) == (128, 96, 90)
    with pytest.raises(data.VideoError):
        reencode.reencode_video(source_tree / "ClassB" / "broken.mp4", tmp_path / "b.mp4")
    assert not (tmp_path / "b.mp4").exists()


def test_reencode_bakes_a_display_rotation_into_the_pixels(tmp_path):
    """A phone video stored sideways with a display matrix (as in test_reliability): the output has no rotation and
    read_frames gives the same upright frames from it as from the source."""
    import struct
    stored = tmp_path / "stored.mp4"
    data.write_video(stored, _moving(30, 96, 64), 25, options={"crf": "18"})
    b = bytearray(stored.read_bytes())
    i = b.find(b"tkhd")
    off = i + 4 + 4 + (20 if b[i + 4] == 0 else 32) + 8 + 8  # the 3x3 matrix of a version 0/1 tkhd box
    b[off:off + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)  # display: 90° clockwise
    phone = tmp_path / "phone.mp4"
    phone.write_bytes(bytes(b))
    assert data.probe(phone).rotation != 0
    out = tmp_path / "out.mp4"
    r = reencode.reencode_video(phone, out, short_side=None, gop=8, crf=18)
    info = data.probe(out)
    assert info.rotation == 0 and (info.width, info.height) == (96, 64) == (r["width"], r["height"])
    got, ref = data.read_frames(out, [0, 29]).float(), data.read_frames(phone, [0, 29]).float()
    assert got.shape == ref.shape and (got - ref).abs().mean() < 6


@pytest.mark.parametrize("settings, ext, codec, max_gap", [
    (dict(), ".mp4", "h264", 8),                                   # the default: x264 tune fastdecode
    (dict(tune="none"), ".mp4", "h264", 8),                        # x264's default tools (the old default)
    (dict(gop=1), ".mkv", "h264", 1),                              # all-intra
    (dict(codec="mpeg4", qscale=3), ".avi", "mpeg4", 8),
    (dict(codec="mjpeg"), ".mp4", "mjpeg", 1),
    (dict(codec="mjpeg"), ".flv", "mjpeg", 1),                     # FLV cannot hold MJPEG: Matroska under the name
])
def test_reencode_codecs_decode_exactly(tmp_path, source_tree, settings, ext, codec, max_gap):
    """Every codec/tune reencode can write: frame count kept, keyframes as asked, and read_frames (seek + decode
    forward) bit-exact against a sequential decode of the output, including frames right after a keyframe."""
    out = tmp_path / f"out{ext}"
    r = reencode.reencode_video(source_tree / "ClassA" / "v_a.mp4", out, short_side=64, **{"gop": 8, **settings})
    assert (r["width"], r["height"], r["frames"]) == (86, 64, 90)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == codec
        s.thread_count = 1
        seq = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(seq) == 90
    keys = _keyframe_packets(out)
    assert keys[0] == 0 and max(np.diff(keys + [90])) <= max_gap
    idx = [0, 1, 8, 9, 45, 46, 89, 3]
    got = data.read_frames(out, idx).numpy()
    for g, j in zip(got, idx):
        assert np.array_equal(g, seq[j]), j
    # the same content as the source, up to scaling and re-encoding (x264 all-intra at CRF 23 is the coarsest)
    ref = data.read_frames(source_tree / "ClassA" / "v_a.mp4", [0, 45, 89], size=(64, 86)).float()
    assert (torch.from_numpy(got[[0, 4, 6]]).float() - ref).abs().mean() < 16


def test_reencode_fastdecode_drops_cabac(tmp_path, source_tree):
    """The default writes CAVLC and no deblocking (tune fastdecode), --tune none CABAC and deblocking: read from the
    settings string x264 writes into every stream it encodes (an SEI message, plain text)."""
    def x264_settings(path):
        with open(path, "rb") as f:
            blob = f.read()
        i = blob.find(b"x264 - core")
        return blob[i:blob.find(b"\x00", i)].decode("latin-1")
    for tune, cabac in (("fastdecode", "cabac=0"), ("none", "cabac=1")):
        out = tmp_path / f"{tune}.mp4"
        reencode.reencode_video(source_tree / "ClassA" / "v_a.mp4", out, short_side=64, gop=8, tune=tune)
        assert cabac in x264_settings(out) and ("deblock=0" in x264_settings(out)) == (tune == "fastdecode")


def test_reencode_refuses_settings_the_encoder_refuses(tmp_path, source_tree):
    with pytest.raises(data.DatasetError, match="tune=fastdecod"):
        reencode.reencode_dataset(source_tree, tmp_path / "dst", tune="fastdecod", workers=1, progress=False)
    assert not (tmp_path / "dst").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="unknown codec"):
        reencode.reencode_video(source_tree / "ClassA" / "v_a.mp4", tmp_path / "x.mp4", codec="vp9")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "reencode.py"), "--src", str(source_tree), "--dst",
                        str(tmp_path / "dst"), "--preset", "medum"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "preset=medum" in r.stderr and not (tmp_path / "dst").exists()
