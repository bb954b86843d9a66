"""Bad input, faults and interruptions: odd videos decode or are refused clearly, Ctrl-C saves, a killed checkpoint
write never corrupts the run, crafted pickles are refused, bf16 agrees with fp32."""
import os
import pickle
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import torch

import cvrl
import data
from conftest import ROOT, textured_frames
from test_cvrl_train import cvrl_args, load, run


def sequential_decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_odd_frame_size(tmp_path):
    # libx264 needs even sizes for yuv420p; MPEG-4 part 2 in AVI stores 175x143 as is (UCF-style files)
    path = tmp_path / "odd.avi"
    fr = textured_frames(12, 143, 175)
    data.write_video(path, fr, 25, "mpeg4")
    info = data.probe(path)
    assert (info.width, info.height) == (175, 143)
    got = data.read_frames(path, [11, 3, 3]).numpy()
    ref = sequential_decode(path)
    assert got.shape == (3, 143, 175, 3) and np.array_equal(got, ref[[11, 3, 3]])
    assert data.read_frames(path, [0], size=(64, 64)).shape == (1, 64, 64, 3)


def test_grayscale_video(tmp_path):
    path = tmp_path / "gray.mp4"
    fr = textured_frames(10, 32, 32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "gray"
        for img in fr:
            for p in s.encode(av.VideoFrame.from_ndarray(img[..., 0].copy(), format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    got = data.read_frames(path, [0, 9]).numpy()
    assert got.shape == (2, 32, 32, 3)
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])


def test_one_frame_video_reads_and_is_too_short_for_a_clip(tmp_path):
    path = tmp_path / "one.mp4"
    data.write_video(path, textured_frames(1, 32, 32), 25)
    assert data.probe(path).num_frames == 1
    assert data.read_frames(path, [0, 0, 5]).shape == (3, 32, 32, 3)  # past the end: the last frame
    with pytest.raises(data.VideoError, match="too short"):
        data.read_clips(path, data.RandomClip(4, 2), np.random.default_rng(0), min_frames=4)


def test_header_frame_count_larger_than_the_stream(tmp_path):
    """A video cut short after its header was written (frame count over-reported): indices past the real end
    return the last decodable frame instead of hanging or crashing."""
    path = tmp_path / "vp9.webm"
    data.write_video(path, textured_frames(30, 32, 32), 25, "libvpx-vp9")
    whole = path.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    info = data.probe(cut)
    got = data.read_frames(cut, [0, info.num_frames - 1, 29])
    assert got.shape[0] == 3


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ)
    env.pop("RANK", None)
    p = subprocess.Popen([sys.executable] + cvrl_args(tiny_synthetic, out, "--epochs", "50"), cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.5)
    assert log.exists(), "the run did not start"
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-2000:]
    assert "interrupted" in stdout and "Traceback" not in stderr
    step = load(out / "checkpoint.pt")["step"]
    assert step >= 3
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "50", "--max-steps", str(step + 1)))
    assert r.returncode == 0 and f"at step {step}" in r.stdout


def test_killed_checkpoint_write_leaves_the_last_good_one(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    assert run(cvrl_args(tiny_synthetic, out, "--epochs", "2", "--max-steps", "4")).returncode == 0
    # what SIGKILL during torch.save leaves behind: a partial temporary file next to the intact checkpoint
    (out / "checkpoint.pt.tmp").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "2"))
    assert r.returncode == 0 and "at step 4" in r.stdout
    assert load(out / "checkpoint.pt")["step"] == 8


def test_corrupt_or_crafted_checkpoint_is_refused(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x04not really a checkpoint")
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1"))
    assert r.returncode != 0 and "cannot read checkpoint" in r.stderr and "Traceback" not in r.stderr

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"method": "cvrl", "config": {}, "payload": Evil()}, out / "checkpoint.pt")
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1"))
    assert r.returncode != 0 and "cannot read checkpoint" in r.stderr
    assert not marker.exists()  # the pickle's code never ran
    with open(out / "raw.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(SystemExit):
        data.load_checkpoint(out / "raw.pkl")
    assert not marker.exists()


def test_bf16_and_fp32_give_the_same_loss():
    torch.manual_seed(0)
    enc = cvrl.build_encoder("tiny")
    model = torch.nn.Sequential(enc, cvrl.ProjectionHead(enc.feature_dim, 64, 32, 2))
    x = torch.rand(8, 3, 4, 32, 32)
    with torch.no_grad():
        z = model(x)
        l32 = cvrl.nt_xent(z[:4], z[4:], 0.1).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = model(x)
            l16 = cvrl.nt_xent(z16[:4], z16[4:], 0.1).item()
    assert z16.dtype == torch.bfloat16  # autocast really ran the network in bf16
    # bf16 keeps ~3 significant digits: cosines move by ~4e-3, i.e. logits by ~0.04 at temperature 0.1
    assert abs(l16 - l32) < 0.05 * abs(l32), (l16, l32)


def test_torchrun_with_a_broken_file_on_one_rank_stays_in_lockstep(tiny_synthetic, tmp_path):
    """Each rank replaces a broken video by another one, so every rank takes the same number of steps and no
    collective waits forever."""
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
    vids = sorted(tiny_synthetic.glob("train/*/*.mp4"))[:15]
    for i, v in enumerate(vids):
        (root / "train" / ("a" if i % 2 else "b") / v.name).write_bytes(v.read_bytes())
    (root / "train" / "a" / "broken.mp4").write_bytes(b"")
    out = tmp_path / "ddp"
    r = run([str(ROOT / "cvrl.py"), "--dataset", "folder", "--data", str(root), "--out", str(out), "--epochs", "2",
             "--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32", "--batch-size", "4",
             "--head-hidden", "64", "--workers", "0"], torchrun=2, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load(out / "checkpoint.pt")["step"] == 4
    assert "broken.mp4" in (out / "skipped.txt").read_text()


def test_rotated_phone_video_comes_out_upright(tmp_path):
    """A portrait phone video stored sideways with a display matrix (written here by patching the MP4 track
    header, as phones do): frames come out as a player shows them."""
    import struct
    path = tmp_path / "stored.mp4"
    fr = textured_frames(6, 48, 32)
    data.write_video(path, fr, 25)
    b = bytearray(path.read_bytes())
    i = b.find(b"tkhd")
    off = i + 4 + 4 + (20 if b[i + 4] == 0 else 32) + 8 + 8  # the 3x3 matrix of a version 0/1 tkhd box
    b[off:off + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)  # display: 90° clockwise
    rot = tmp_path / "phone.mp4"
    rot.write_bytes(bytes(b))
    info = data.probe(rot)
    assert info.rotation == 270 and (info.width, info.height) == (48, 32)
    ref = sequential_decode(path)
    got = data.read_frames(rot, [0, 5]).numpy()
    assert got.shape == (2, 32, 48, 3)
    assert np.array_equal(got, np.rot90(ref[[0, 5]], -1, axes=(1, 2)))  # rotated clockwise, as displayed
    assert data.read_frames(rot, [0], size=(24, 36)).shape == (1, 24, 36, 3)


def test_loader_workers_survive_broken_files(tiny_synthetic, tmp_path):
    """Decode errors inside DataLoader worker processes are caught there: every batch arrives full and the broken
    paths travel with it to the main process."""
    good = sorted(str(p) for p in tiny_synthetic.glob("train/*/*.mp4"))[:18]
    bad = [tmp_path / "empty.mp4", tmp_path / "junk.mp4"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(os.urandom(4000))
    paths = good + [str(b) for b in bad]
    vl = data.VideoList(paths, [i % 2 for i in range(len(paths))], ["a", "b"])
    ds = data.VideoDataset(vl, data.RandomClip(4, 2), canvas=(32, 32), resample=True, min_frames=4)
    loader = data.make_loader(ds, 5, workers=2, seed=0)
    seen, steps = set(), 0
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            assert batch["video"].shape[0] == 5
            seen.update(b.split(":")[0] for b in batch["bad"])
            steps += 1
    assert steps == 12 and seen == {str(b) for b in bad}
