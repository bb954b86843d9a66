"""Your own videos (#18): any folder of unlabeled videos for pretraining (found recursively, non-video files counted,
broken ones skipped and listed), --dataset auto's three rules, the user's folder left untouched, the cached folder
index (reused without listing, rebuilt when the folder changes), `python scripts/show.py` and scripts/neighbours.py."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
import show
from conftest import ROOT, textured_frames

# tiny networks and views, as tests/test_cvrl_train.py's and tests/test_lss_train.py's TINY; batch 5 = every video of
# the phone folder in one step, so each epoch reads the two broken files too
CVRL_TINY = ["--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32", "--batch-size", "5",
             "--head-hidden", "64", "--workers", "0", "--log-every", "1", "--max-steps", "2"]
LSS_TINY = ["--init", "random", "--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64",
            "--text-layers", "1", "--size", "32", "--local-size", "16", "--canvas", "32", "32", "--frames", "4",
            "--stride", "2", "--local-frames", "2", "--local-views", "2", "--templates", "single", "--batch-size", "5",
            "--workers", "0", "--log-every", "1", "--max-steps", "2"]
GOOD = ["VID_20240601_120000.mp4", "holiday/beach.mp4", "holiday/2019/old_camera.avi"]
BROKEN = ["holiday/broken.mp4", "empty.mov"]
OTHER = ["notes.txt", "holiday/cover.jpg", ".DS_Store", "holiday/._beach.mp4"]  # the last two: hidden


def run(args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def snapshot(root):
    """Every file and folder under root with its size and modification time (ns)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in [*dirs, *files, "."]:
            st = os.stat(os.path.join(d, n))
            out[os.path.relpath(os.path.join(d, n), root)] = (st.st_size if n in files else None, st.st_mtime_ns)
    return out


def make_phone_folder(root):
    """Phone-style videos: portrait 720x1280 at 30 fps, 640x360 at 25 fps (H.264), a 15-fps MPEG-4 AVI, nested at
    different depths; plus a truncated and an empty 'video', and files that are not videos."""
    (root / "holiday" / "2019").mkdir(parents=True)
    data.write_video(root / GOOD[0], textured_frames(24, 1280, 720, seed=1), fps=30)
    data.write_video(root / GOOD[1], textured_frames(20, 360, 640, seed=2), fps=25)
    data.write_video(root / GOOD[2], textured_frames(12, 240, 320, seed=3), fps=15, codec="mpeg4")
    good = (root / GOOD[1]).read_bytes()
    (root / BROKEN[0]).write_bytes(good[: len(good) // 3])  # a download cut short
    (root / BROKEN[1]).write_bytes(b"")
    for name in OTHER:
        (root / name).write_bytes(b"not a video")


@pytest.fixture(scope="module")
def phone(tmp_path_factory):
    root = tmp_path_factory.mktemp("phone") / "videos"
    make_phone_folder(root)
    return root


@pytest.fixture(scope="module")
def cvrl_run(phone, tmp_path_factory):
    before = snapshot(phone)
    out = tmp_path_factory.mktemp("cvrl") / "run"
    r = run(["cvrl.py", "--data", phone, "--out", out, *CVRL_TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out, before


@pytest.fixture(scope="module")
def lss_run(phone, tmp_path_factory):
    out = tmp_path_factory.mktemp("lss") / "run"
    r = run(["lss.py", "--data", phone, "--out", out, *LSS_TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


# ----------------------------------------------------------------------------- finding the videos

@pytest.mark.parametrize("layout", ["flat", "nested", "mixed"])
def test_flat_nested_and_mixed_folders_are_found(tmp_path, layout):
    names = {"flat": ["a.mp4", "b.MOV", "c.mkv"],
             "nested": ["x/a.mp4", "x/y/b.webm", "x/y/z/w/c.avi"],
             "mixed": ["a.mp4", "2023/b.mp4", "2023/june/c.3gp", "2024/d.m4v"]}[layout]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")  # found by name; nothing is opened until a clip is read
    assert data.resolve_dataset("auto", str(tmp_path))[0] == "unlabeled"
    videos = data.load_split("auto", str(tmp_path))
    assert sorted(videos.paths) == sorted(str(tmp_path / n) for n in names)
    assert videos.labels == [-1] * len(names) and videos.classes == [] and videos.name.startswith("unlabeled:")


def test_non_video_files_are_counted_and_broken_videos_are_skipped_and_listed(phone, capsys):
    videos = data.load_split("auto", str(phone))
    assert sorted(videos.paths) == sorted(str(phone / n) for n in GOOD + BROKEN)  # hidden ._beach.mp4 is not a video
    assert videos.ignored == len(OTHER)
    assert f"{len(OTHER)} files under {phone} ignored" in capsys.readouterr().err
    # training: an unreadable video is replaced by another one, and its path travels with the batch to be reported
    ds = data.VideoDataset(videos, data.RandomClip(4, 2), canvas=(32, 32), resample=True, min_frames=4)
    for name in BROKEN:
        item = ds[(videos.paths.index(str(phone / name)), 0)]
        assert item["ok"] and item["video"].shape == (1, 4, 32, 32, 3)
        assert any(b.startswith(str(phone / name)) for b in item["bad"])
    # `python scripts/dataset.py check --data DIR` lists exactly the broken ones (an unlabeled folder has one split)
    r = run(["scripts/dataset.py", "check", "--data", phone, "--workers", "1"])
    assert r.returncode == 1
    assert sorted(ln.split()[1].rstrip(":") for ln in r.stdout.splitlines() if "BROKEN" in ln) == \
        sorted(str(phone / n) for n in BROKEN)
    assert "5 videos found" in r.stdout


# ----------------------------------------------------------------------------- --dataset auto

def test_dataset_inference_rules(tmp_path, tiny_synthetic):
    import cvrl
    import lss
    assert data.resolve_dataset("auto", None) == ("synthetic", "")  # no flags: the synthetic set in the cache
    assert data.resolve_dataset(None, None)[0] == "synthetic"
    assert data.resolve_dataset("auto", str(tiny_synthetic))[0] == "synthetic"  # classes.txt
    labelled = tmp_path / "labelled"
    for split in ("train", "val"):
        (labelled / split / "waving").mkdir(parents=True)
    kind, why = data.resolve_dataset("auto", str(labelled))
    assert kind == "folder" and "train/ and test/" in why
    plain = tmp_path / "plain"
    (plain / "train").mkdir(parents=True)  # train/ alone is not a labelled dataset: every video under it
    kind, why = data.resolve_dataset("auto", str(plain))
    assert kind == "unlabeled" and "unlabeled" in why
    # an explicit --dataset is respected, whatever the folder looks like
    assert data.resolve_dataset("folder", str(plain)) == ("folder", "")
    assert data.resolve_dataset("unlabeled", str(labelled)) == ("unlabeled", "")
    assert cvrl.parse_args(["--data", str(plain)]).dataset == "unlabeled"
    assert cvrl.parse_args(["--data", str(labelled)]).dataset == "folder"
    assert cvrl.parse_args(["--dataset", "folder", "--data", str(plain)]).dataset == "folder"
    assert cvrl.parse_args([]).dataset == "synthetic"
    # LSS: no class names, so the union category space; a dataset-named space is refused with a message
    assert lss.parse_args(["--data", str(plain)]).concepts == "union"
    assert lss.parse_args(["--data", str(labelled)]).concepts == "dataset"
    with pytest.raises(SystemExit, match="--concepts union"):
        lss.parse_args(["--data", str(plain), "--concepts", "dataset"])
    # a --data that does not exist is never created by auto (only an explicit --dataset synthetic writes there)
    with pytest.raises(data.DatasetError, match="--dataset synthetic"):
        cvrl.parse_args(["--data", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()


def test_data_alone_after_a_folder_run_is_decided_by_the_new_folder(tmp_path, phone):
    """eval_linear.py (and lss.py zero-shot, neighbours.py) with --data and no --dataset: after a run on a folder
    kind, the new folder decides; the checkpoint's 'synthetic' never means 'generate into the user's folder'."""
    import eval_linear
    labelled = tmp_path / "labelled"
    for split in ("train", "test"):
        (labelled / split / "waving").mkdir(parents=True)
    views = {"frames": 4, "stride": 2, "size": 32, "canvas": [32, 32]}
    for trained_on in ("synthetic", "unlabeled", "folder"):
        cfg = eval_linear.resolve_config(eval_linear.Config(ckpt="x", data=str(labelled)),
                                         {"dataset": trained_on, "data": "/elsewhere", **views})
        assert (cfg.dataset, cfg.data) == ("folder", str(labelled))
        cfg = eval_linear.resolve_config(eval_linear.Config(ckpt="x", data=str(phone)),
                                         {"dataset": trained_on, **views})
        assert cfg.dataset == "unlabeled"
    cfg = eval_linear.resolve_config(eval_linear.Config(ckpt="x", data=str(labelled)),
                                     {"dataset": "ucf101", "annotations": "/ann", **views})
    assert (cfg.dataset, cfg.annotations) == ("ucf101", "/ann")  # a kind that needs annotations keeps them


def test_synthetic_is_never_generated_into_a_users_folder(phone, tmp_path):
    before = snapshot(phone.parent)
    with pytest.raises(data.DatasetError, match="nothing is generated there"):
        data.load_split("synthetic", str(phone))
    assert snapshot(phone.parent) == before  # not even a temporary folder beside it
    data.ensure_synthetic(tmp_path / "new", data.SyntheticWorld(train_per_class=1, test_per_class=1, video_size=32,
                                                              video_frames=16))  # asked for: ok
    assert (tmp_path / "new" / "classes.txt").exists()


def test_an_interrupted_synthetic_generation_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    def interrupted(out, world):
        (out / "half.mp4").write_bytes(b"x")
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "make_synthetic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.ensure_synthetic(tmp_path / "world")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary folder: the next run generates afresh


# ----------------------------------------------------------------------------- the index

def test_index_is_reused_without_listing_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "big"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            (root / f"c{c}" / f"v{i}.mp4").write_bytes(b"x")
    (root / "c0" / "readme.txt").write_text("x")
    first = data.index_folder(root)
    assert not first.reused and len(first.rel) == 12 and first.ignored == 1
    # Just modified: a folder written less than INDEX_RACY_S before the listing is not trusted (coarse mtimes)
    assert not data.index_folder(root).reused
    past = os.stat(root).st_mtime - 3600
    for d in [root, *root.iterdir()]:
        os.utime(d, (past, past))
    assert not data.index_folder(root).reused  # the folders' mtimes changed: listed again, and now trusted
    real_walk = os.walk
    monkeypatch.setattr(data.os, "walk", lambda *a, **k: pytest.fail("listed the folder again"))
    again = data.index_folder(root)
    assert again.reused and again.rel == first.rel
    monkeypatch.setattr(data.os, "walk", real_walk)
    (root / "c1" / "new.mp4").write_bytes(b"x")  # a new file changes its folder's mtime
    rebuilt = data.index_folder(root)
    assert not rebuilt.reused and "c1/new.mp4" in rebuilt.rel and len(rebuilt.rel) == 13
    (root / "c2" / "deep").mkdir()  # a new subfolder changes its parent's mtime
    (root / "c2" / "deep" / "x.mp4").write_bytes(b"x")
    assert "c2/deep/x.mp4" in data.index_folder(root).rel
    assert data._index_path(root).parent == data.cache_dir() / "index"  # never written under the root


# ----------------------------------------------------------------------------- training on the phone folder

def test_cvrl_trains_on_phone_videos(cvrl_run, phone):
    r, out, _ = cvrl_run
    # 5 videos, 2 of them unreadable: the small folder is checked up front, so the run trains on the 3 others, in
    # batches of 3 (the batch of 5 could never be filled), and says so
    assert "every video under it, unlabeled" in r.stdout and "3 videos, no labels" in r.stdout, r.stdout[:3000]
    assert "note: 3 training videos cannot fill a batch of 5" in r.stdout
    assert f"{len(OTHER)} files under {phone} ignored" in r.stderr
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["dataset"] == "unlabeled" and ck["config"]["data"] == str(phone)
    skipped = (out / "skipped.txt").read_text()  # each epoch is one batch of all 5 videos: both broken ones read
    assert all(str(phone / n) in skipped for n in BROKEN) and not any(str(phone / n) + ":" in skipped for n in GOOD)
    assert "scripts/neighbours.py" in r.stdout


def test_users_folder_is_unchanged_by_a_cvrl_run(cvrl_run, phone):
    _, _, before = cvrl_run
    assert snapshot(phone) == before  # same files, same sizes, same modification times (folders too)


def test_lss_trains_on_phone_videos_with_the_union_concepts(lss_run, phone):
    r, out = lss_run
    assert "--concepts union" in r.stdout and "no zero-shot evaluation" in r.stdout
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["dataset"] == "unlabeled" and ck["config"]["concepts"] == "union"
    assert len(ck["concept_names"]) > 500  # UCF101 + HMDB51 + Kinetics-400 names, deduplicated
    assert all(str(phone / n) in (out / "skipped.txt").read_text() for n in BROKEN)


def test_evaluations_that_need_labels_refuse_an_unlabeled_folder(cvrl_run, lss_run, phone):
    import eval_linear
    import lss
    with pytest.raises(SystemExit, match=r"ROOT/train/<class>/<video> and ROOT/test/<class>/<video>"):
        eval_linear.main(["--ckpt", str(cvrl_run[1] / "checkpoint.pt"), "--workers", "0"])
    with pytest.raises(SystemExit, match=r"zero-shot classification needs labels.*ROOT/train/<class>"):
        lss.main(["zero-shot", "--ckpt", str(lss_run[1] / "checkpoint.pt"), "--workers", "0"])


# ----------------------------------------------------------------------------- pictures

@pytest.mark.parametrize("method", ["cvrl", "lss"])
def test_show_writes_a_deterministic_png(phone, tmp_path, method):
    flags = ["--data", str(phone), "--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32"]
    flags += ["--local-views", "2", "--local-frames", "2", "--local-size", "16"] if method == "lss" else []
    a = show.picture(method, flags + ["--seed", "3"], tmp_path / "a.png", num_videos=2, tile=64)
    with Image.open(a) as im:
        im.verify()
    with Image.open(a) as im:
        rows = 4 if method == "cvrl" else 3 + 2  # cvrl: 2 clips and 2 views; lss: window, 2 globals, 2 locals
        assert im.format == "PNG" and im.width >= 4 * 64 and im.height >= 2 * (rows - 1) * 64
        assert np.asarray(im).std() > 10  # pictures, not a blank page
    b = show.picture(method, flags + ["--seed", "3"], tmp_path / "b.png", num_videos=2, tile=64)
    c = show.picture(method, flags + ["--seed", "4"], tmp_path / "c.png", num_videos=2, tile=64)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


def test_show_command_line(phone, tmp_path):
    out = tmp_path / "show.png"
    r = run(["scripts/show.py", "--method", "cvrl", "--out", out, "--videos", "1", "--data", phone, "--frames", "4",
             "--stride", "2", "--size", "32", "--canvas", "32", "32"])
    assert r.returncode == 0, r.stderr[-3000:]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 64 and im.height > 4 * 64
    assert run(["scripts/dataset.py", "check", "--nonsense"]).returncode == 2  # other commands still refuse unknown flags


def test_neighbours_picture_is_written(cvrl_run, lss_run, phone, tmp_path):
    out = tmp_path / "nb.png"
    r = run(["scripts/neighbours.py", "--ckpt", cvrl_run[1] / "checkpoint.pt", "--out", out, "--queries", "2",
             "--k", "2", "--workers", "0", "--tile", "48"])
    assert r.returncode == 0, r.stderr[-3000:]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 3 * 48 and im.height >= 2 * 48
    sims = [float(ln.split()[0]) for ln in r.stdout.splitlines() if ln.startswith("  0.") or ln.startswith("  1.")]
    assert len(sims) == 4 and all(-1 <= s <= 1.0001 for s in sims)
    assert r.stdout.count("SKIPPED") == len(BROKEN)
    import neighbours
    res = neighbours.main(["--ckpt", str(lss_run[1] / "checkpoint.pt"), "--out", str(tmp_path / "l.png"),
                           "--queries", "3", "--k", "2", "--workers", "0"])
    assert len(res["queries"]) == 3 and all(len(q["neighbours"]) == 2 for q in res["queries"])
    decodable = {str(phone / n) for n in GOOD}
    assert all(q["query"] in decodable and {n["path"] for n in q["neighbours"]} <= decodable - {q["query"]}
               for q in res["queries"])
