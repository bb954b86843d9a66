"""A person's first hour: every mistake of a new user answered in one line (exit status 2, no traceback), long runs
that survive SIGTERM and a full disk, small folders that just work, nothing silent for long, legible pictures."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import data
import pretrain_clip
import training
from conftest import ROOT

# tiny networks and views (as tests/test_cvrl_train.py's), so a step takes a fraction of a second
CVRL_TINY = ["--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32", "--head-hidden", "64",
             "--workers", "0"]


def run(args, timeout=600, **env):
    e = {k: v for k, v in os.environ.items() if k != "RANK"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**e, **env})


def one_line_error(r, *words):
    """Exit status 2, no traceback, and an error line that says each of `words`."""
    assert r.returncode == 2, (r.returncode, r.stdout[-1500:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    for w in words:
        assert w in line, (w, line)
    return line


def moving_videos(root, n, frames=24, size=48):
    """n small videos of a square moving sideways, one per file, in root (created)."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        v = np.zeros((frames, size, size, 3), np.uint8)
        for t in range(frames):
            x = (4 + 2 * t + 5 * k) % (size - 8)
            v[t, 16:24, x:x + 8] = 255
        data.write_video(root / f"clip_{k}.mp4", v, fps=12)
    return root


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return moving_videos(tmp_path_factory.mktemp("own") / "videos", 4)


# ----------------------------------------------------------------------------- one line for every mistake

def test_show_with_a_missing_folder_or_a_file(tmp_path, four):
    one_line_error(run(["scripts/show.py", "--method", "cvrl", "--data", tmp_path / "NOPE", "--out", tmp_path / "x.png"]),
                   "NOPE", "does not exist")
    one_line_error(run(["scripts/show.py", "--method", "cvrl", "--data", four / "clip_0.mp4", "--out",
                        tmp_path / "x.png"]), "is a file", f"--data {four}")


def test_a_checkpoint_of_the_other_method_is_named(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    training.save_checkpoint(out / "checkpoint.pt", {"method": "lss", "config": {}, "step": 3})
    one_line_error(run(["cvrl.py", "--dataset", "synthetic", "--data", tiny_synthetic, "--out", out, *CVRL_TINY]),
                   "'lss' checkpoint", "another --out")


def test_a_video_file_as_data_is_named_as_a_file_and_never_touched(tmp_path, four):
    video = four / "clip_1.mp4"
    before = video.read_bytes()
    line = one_line_error(run(["cvrl.py", "--data", video, "--out", tmp_path / "o", *CVRL_TINY]), "is a file",
                          f"--data {four}")
    line2 = one_line_error(run(["cvrl.py", "--dataset", "synthetic", "--data", video, "--out", tmp_path / "o",
                                *CVRL_TINY], timeout=120), "is a file", "nothing is generated")
    for text in (line, line2):
        assert "remove" not in text and "delete" not in text
    assert video.read_bytes() == before and sorted(p.name for p in four.iterdir()) == [f"clip_{k}.mp4" for k in range(4)]


def test_reencode_names_an_unwritable_destination(tmp_path, four):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a destination under a file cannot be created, even by root
    r = run(["scripts/reencode.py", "--src", four, "--dst", blocker / "sub", "--workers", "1"])
    one_line_error(r, "cannot write into --dst", str(blocker / "sub"))
    assert "BROKEN" not in r.stdout


def test_a_read_only_cache_gets_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = run(["cvrl.py", "--out", tmp_path / "o", *CVRL_TINY, "--max-steps", "1"], timeout=120,
            NANOVIDEOSSL_CACHE=str(blocker / "cache"))
    one_line_error(r, "cannot write the synthetic videos", "NANOVIDEOSSL_CACHE")


def test_a_folder_of_unreadable_files_lists_each_once(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video at all")
    for args in ([], ["--batch-size", "1"]):
        line = one_line_error(run(["cvrl.py", "--data", folder, "--out", tmp_path / "o", *CVRL_TINY, *args]),
                              "no readable video")
        assert line.count("empty.mp4") == 1 and line.count("notes.mp4") == 1


def test_a_corrupt_clip_file_gets_one_line(tiny_synthetic, tmp_path):
    bad = tmp_path / "clip.pt"
    bad.write_bytes(b"\0" * 1000)
    one_line_error(run(["lss.py", "--init", "clip", "--clip", bad, "--dataset", "synthetic", "--data", tiny_synthetic,
                        "--out", tmp_path / "o", "--workers", "0"]), str(bad))


def test_a_truncated_cached_tiny_clip_is_said_and_rebuilt(tmp_path):
    path = tmp_path / "tiny-clip.pt"
    good = {"visual.conv1.weight": torch.zeros(2, 3, 8, 8)}
    training.save_checkpoint(path, good)
    said = []
    assert pretrain_clip.usable(path, said.append) and not said
    path.write_bytes(path.read_bytes()[:300])  # cut short
    assert not pretrain_clip.usable(path, said.append)
    assert "unreadable" in said[0] and "pretraining it again" in said[0]
    assert not path.exists() and path.with_suffix(".broken").exists()  # moved aside: ensure() makes it again


# ----------------------------------------------------------------------------- small folders work as written

def test_the_readme_own_videos_command_works_on_four_videos(tmp_path, four):
    """`python cvrl.py --data ~/videos256 --out runs/own` (README, "Train on your own videos") on 4 videos: the batch
    of 64 is lowered to 4, said in one line with what it means for the negatives."""
    out = tmp_path / "own"
    r = run(["cvrl.py", "--data", four, "--out", out, "--max-steps", "2", "--workers", "0"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 training videos cannot fill a batch of 64" in r.stdout and "6 negatives per clip instead of 126" in r.stdout
    ckpt = training.load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["batch_size"] == 4


def test_lss_on_four_videos(tmp_path, four):
    out = tmp_path / "lss"
    r = run(["lss.py", "--data", four, "--out", out, "--max-steps", "2", "--workers", "0", "--init", "random",
             "--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64", "--text-layers", "1",
             "--frames", "4", "--stride", "2", "--local-views", "1", "--local-frames", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training with batches of 4" in r.stdout


def test_a_truncated_video_is_skipped_and_listed_once(tmp_path):
    folder = moving_videos(tmp_path / "v", 3)
    whole = (folder / "clip_0.mp4").read_bytes()
    (folder / "clip_0.mp4").write_bytes(whole[: int(len(whole) * 0.6)])  # header kept, the end cut: read fails later
    out = tmp_path / "o"
    r = run(["cvrl.py", "--data", folder, "--out", out, *CVRL_TINY, "--batch-size", "3", "--epochs", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (out / "skipped.txt").read_text().splitlines() if (out / "skipped.txt").exists() else []
    assert sum("clip_0.mp4" in ln for ln in lines) <= 1
    assert r.stdout.count("skipped unreadable video:") == len(lines)


# ----------------------------------------------------------------------------- faults

def test_sigterm_saves_exits_143_and_the_run_resumes(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    args = ["cvrl.py", "--dataset", "synthetic", "--data", tiny_synthetic, "--out", out, *CVRL_TINY,
            "--batch-size", "8", "--log-every", "1", "--epochs", "50"]
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    p = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stderr[-2000:]
    assert "terminated (SIGTERM)" in stdout and "Traceback" not in stderr
    step = training.load_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 3
    r = run([*args[:-1], "50", "--max-steps", str(step + 1)])
    assert r.returncode == 0 and f"at step {step}" in r.stdout


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    training.save_checkpoint(path, {"step": 1})

    def full(obj, f):
        f.write(b"PK" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as e:
        training.save_checkpoint(path, {"step": 2})
    assert "no space left on device writing" in str(e.value.code) and "previous checkpoint is intact" in str(e.value.code)
    monkeypatch.undo()
    assert training.load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_resumed_run_whose_folder_changed_says_how(tmp_path):
    folder = moving_videos(tmp_path / "v", 6)
    out = tmp_path / "o"
    args = ["cvrl.py", "--data", folder, "--out", out, *CVRL_TINY, "--batch-size", "2", "--epochs", "4"]
    assert run([*args, "--max-steps", "2"]).returncode == 0
    for k in (4, 5):
        (folder / f"clip_{k}.mp4").unlink()
    r = run([*args, "--max-steps", "3"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training videos changed since this run started (4 now, 6 then)" in r.stdout
    assert "an epoch is now 2 steps (was 3)" in r.stdout


# ----------------------------------------------------------------------------- nothing silent for long

def test_a_five_step_smoke_shows_its_loss(tiny_synthetic, tmp_path):
    out = tmp_path / "smoke"
    r = run(["cvrl.py", "--dataset", "synthetic", "--data", tiny_synthetic, "--out", out, *CVRL_TINY,
             "--batch-size", "8", "--epochs", "3", "--max-steps", "5"])  # --log-every 10 by default
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 5 and np.isfinite(log[-1]["loss"])


def test_waiting_for_another_process_pretraining_says_whom(tmp_path):
    import fcntl
    out = tmp_path / "clip.pt"
    with open(out.with_suffix(".lock"), "w") as lock:
        lock.write("process 4242 (started 12:00:00)")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        p = subprocess.Popen([sys.executable, "scripts/pretrain_clip.py", "--path-only", "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # it starts, finds the lock held and says so
        training.save_checkpoint(out, {"visual.conv1.weight": torch.zeros(2, 3, 8, 8)})  # the other one finishes
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr[-2000:]
    assert "waiting for process 4242" in stderr and stdout.strip() == str(out)


# ----------------------------------------------------------------------------- pictures and hints

def test_names_in_any_script_are_drawn_legibly():
    from PIL import ImageFont
    font = ImageFont.load_default()
    assert training.legible("plain.mp4", font) == "plain.mp4"
    assert training.legible("日本.mp4", font) in ("日本.mp4", "\\u65e5\\u672c.mp4")  # drawn, or spelt in ASCII
    picture = training.image_grid([("café / 日本.mp4", [np.zeros((8, 8, 3), np.uint8)], ["Ωmega"])])
    assert picture.width > 8


def test_printed_commands_quote_paths(tiny_synthetic, tmp_path):
    out = tmp_path / "my runs" / "o'k"
    r = run(["cvrl.py", "--dataset", "synthetic", "--data", tiny_synthetic, "--out", out, *CVRL_TINY,
             "--batch-size", "8", "--max-steps", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    hint = next(ln for ln in r.stdout.splitlines() if ln.startswith("evaluate:"))
    import shlex
    assert shlex.split(hint.split("evaluate: ", 1)[1])[3] == str(out / "checkpoint.pt")
