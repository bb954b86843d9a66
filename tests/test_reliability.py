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
import training
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
    assert data.read_frames(path, [0, 0]).shape == (2, 32, 32, 3)
    with pytest.raises(IndexError, match="has 1 frames"):
        data.read_frames(path, [0, 5])  # past the end: refused, not the last frame again
    with pytest.raises(data.VideoError, match="too short"):
        data.read_clips(path, data.RandomClip(4, 2), np.random.default_rng(0), min_frames=4)


def sequential_prefix(path):
    """The frames a sequential decode gets out of a (possibly truncated) file before it ends or fails."""
    frames = []
    try:
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
    except av.error.FFmpegError:
        pass
    return frames


def write_truncatable(path, n=83):
    """Files whose header survives a cut: AVI (header at the front, index at the end: UCF101's files), MP4 with its
    index moved to the front (movflags=faststart), and WebM (no frame count: counted from packets)."""
    fr = textured_frames(n, 48, 64)
    if path.suffix == ".avi":
        data.write_video(path, fr, 25, "mpeg4")
    elif path.suffix == ".mp4":
        data.write_video(path, fr, 25, "libx264", {"g": "16"}, {"movflags": "faststart"})
    else:
        data.write_video(path, fr, 25, "libvpx-vp9")


@pytest.mark.parametrize("ext", [".avi", ".mp4", ".webm"])
def test_truncated_files_never_return_a_frame_they_do_not_hold(tmp_path, ext):
    """Cut a file at several fractions; ask for every frame its header promises, one at a time. Each read returns
    exactly the frame a sequential decode gets, or raises VideoError 'truncated'; never a stand-in frame."""
    whole = tmp_path / f"whole{ext}"
    write_truncatable(whole)
    raw = whole.read_bytes()
    checked = truncated = 0
    for frac in (0.33, 0.5, 0.75, 0.9):
        cut = tmp_path / f"cut{int(frac * 100)}{ext}"
        cut.write_bytes(raw[:int(len(raw) * frac)])
        ref = sequential_prefix(cut)
        try:
            info = data.probe(cut)
        except data.VideoError:
            continue  # refused at open: fine, nothing is returned
        for i in range(info.num_frames):
            try:
                got = data.read_frames(cut, [i]).numpy()[0]
            except data.VideoError as e:
                assert "truncated" in e.reason and f"frame {i}" in e.reason, e.reason
                assert i >= len(ref) - 1, f"{cut.name}: frame {i} refused, a sequential decode has {len(ref)}"
                truncated += 1
            else:
                assert i < len(ref) and np.array_equal(got, ref[i]), f"{cut.name}: frame {i} is not the file's"
                checked += 1
    assert checked > 50 and (truncated > 0 or ext == ".webm")  # WebM counts its frames from what is there


def test_truncated_avi_in_a_ucf101_layout_is_skipped_and_reported(tiny_synthetic, tmp_path):
    """Training resamples and lists it in skipped.txt, evaluation lists it under skipped with the reason, and
    `python scripts/dataset.py check` names it."""
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    classes = ["Archery", "Biking"]
    (ann / "classInd.txt").write_text("1 Archery\n2 Biking\n")
    train, test = [], []
    for i, v in enumerate(sorted(tiny_synthetic.glob("train/*/*.mp4"))[:20]):
        c = classes[i % 2]
        dst = root / c / f"v_{c}_g{8 + i:02d}_c01.avi"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(v.read_bytes())
        (train if i < 14 else test).append(f"{c}/{dst.name}")
    bad = root / "Biking" / "v_Biking_g30_c01.avi"
    data.write_video(bad, textured_frames(48, 64, 64), 8, "mpeg4")
    bad.write_bytes(bad.read_bytes()[: int(bad.stat().st_size * 0.4)])  # header says 48 frames; about 19 remain
    assert data.probe(bad).num_frames == 48
    (ann / "trainlist01.txt").write_text("".join(f"{p} {classes.index(p.split('/')[0]) + 1}\n"
                                                 for p in train + ["Biking/v_Biking_g30_c01.avi"]))
    (ann / "testlist01.txt").write_text("".join(f"{p}\n" for p in test + ["Biking/v_Biking_g30_c01.avi"]))
    ucf = ["--dataset", "ucf101", "--data", str(root), "--annotations", str(ann), "--fold", "1"]
    out = tmp_path / "run"
    r = run([str(ROOT / "cvrl.py"), *ucf, "--out", str(out), "--epochs", "4", "--frames", "4", "--stride", "2",
             "--size", "32", "--canvas", "32", "32", "--batch-size", "5", "--head-hidden", "64", "--workers", "0"])
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = (out / "skipped.txt").read_text()
    assert str(bad) in skipped and "truncated" in skipped
    js = tmp_path / "e.json"
    r = run([str(ROOT / "eval_linear.py"), "--ckpt", str(out / "checkpoint.pt"), *ucf, "--json", str(js),
             "--workers", "0", "--epochs", "5"])
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    res = json.loads(js.read_text())
    test_skips = [s for s in res["skipped"] if s["split"] == "test"]
    assert [s["path"] for s in test_skips] == [str(bad)] and "truncated" in test_skips[0]["reason"]
    assert res["num_test"] == len(test)
    r = run([str(ROOT / "scripts" / "dataset.py"), "check", *ucf, "--workers", "1"])
    assert r.returncode == 1 and str(bad) in r.stdout and "truncated" in r.stdout, r.stdout[-2000:]


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


def test_ctrl_c_during_a_checkpoint_write_is_held_until_the_file_is_whole(tmp_path, monkeypatch):
    # CI once caught SIGINT landing inside torch.save (the periodic checkpoint): the zip writer died with
    # "unexpected pos", exit 1 and a traceback instead of 130. Here the signal arrives mid-write, every time.
    path, real_save = tmp_path / "checkpoint.pt", torch.save
    state = {"step": 7, "w": torch.arange(100_000, dtype=torch.float32)}

    def save_interrupted(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode: inside the write
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(path, state)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual Ctrl-C is back
    loaded = training.load_checkpoint(path)  # whole and renamed, and no temporary file left beside it
    assert loaded["step"] == 7 and torch.equal(loaded["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    with pytest.raises(KeyboardInterrupt):  # without the hold, Ctrl-C still stops at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


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
        training.load_checkpoint(out / "raw.pkl")
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
    """A broken video in a small folder is set aside before training (the up-front check of training_videos), on
    every rank alike, so the ranks shard the same 15 videos and take the same number of steps; no collective waits
    forever. (A video that breaks mid-run is replaced by the dataset: test_data.py.)"""
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
    assert load(out / "checkpoint.pt")["step"] == 2  # 15 videos / (4 x 2 ranks): 1 step per epoch, 2 epochs
    assert (out / "skipped.txt").read_text().count("broken.mp4") == 1  # listed once, not once per rank


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
