"""
The built-in synthetic dataset and a dataset's health, from the command line.

    python scripts/dataset.py synthetic --out DIR --train-per-class 4 --video-size 32   # write the synthetic videos
    python scripts/dataset.py check --dataset ucf101 --data UCF-101 --annotations ucfTrainTestlist --fold 1
    python scripts/dataset.py check --data ~/videos      # list every missing, broken or truncated video first

`synthetic` takes every knob of data.SyntheticWorld as a flag (what cvrl.py and lss.py generate into their cache on
their own); `check` probes every video of a split and decodes its first, middle and last frame, exit status 1 when
any is missing or unreadable.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import eval_linear  # noqa: E402
import training  # noqa: E402


def check_dataset(videos: Sequence[str], workers=2, progress=True):
    """Probe every video and decode its first, middle and last frame. Returns [(path, reason)] of broken ones."""
    bad = []
    with mp.get_context("spawn").Pool(max(1, workers)) as pool:
        for path, reason in tqdm(pool.imap(data.check_video, videos, chunksize=4), total=len(videos), desc="checking",
                                 unit="video", disable=not progress):
            if reason:
                bad.append((path, reason))
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="write the synthetic action dataset with train/test split files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--out", required=True)
    helps = training.field_helps(data.SyntheticWorld)  # the world's fields are the flags, with their comments as help
    for f in dataclasses.fields(data.SyntheticWorld):
        s.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default, help=helps.get(f.name))
    c = eval_linear.add_data_args(sub.add_parser("check", help="scan a dataset and list unreadable videos"))
    c.add_argument("--split", default="both", choices=["train", "test", "both"])
    c.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 8))
    a = ap.parse_args(argv)
    if a.cmd == "synthetic":
        out = Path(a.out)
        if (out / "classes.txt").exists():
            sys.exit(f"{out} already holds a synthetic dataset; remove it first or choose another --out")
        world = data.SyntheticWorld(**{f.name: getattr(a, f.name) for f in dataclasses.fields(data.SyntheticWorld)})
        data.make_synthetic(out, world)
        print(f"wrote {out}: {len(data.SYNTHETIC_CLASSES)} classes, {world.train_per_class}/{world.test_per_class} videos "
              f"per class (train/test), split files {out}/train.txt {out}/test.txt")
        return 0
    total_bad = 0
    try:
        a.dataset, why = data.resolve_dataset(a.dataset, a.data)
    except data.DatasetError as e:
        sys.exit(f"error: {e}")
    if why:
        print(why)
    splits = ["train", "test"] if a.split == "both" else [a.split]
    if a.dataset == "unlabeled" and a.split == "both":
        splits = ["train"]  # every video under the root
    for split in splits:
        try:
            videos = data.load_split(a.dataset, a.data, a.annotations, a.fold, split)
        except data.DatasetError as e:
            sys.exit(f"error: {e}")
        bad = check_dataset(videos.paths, a.workers)
        print(f"{split}: {len(videos)} videos found, {len(videos.missing)} listed but missing, {len(bad)} unreadable")
        for m in videos.missing:
            print(f"  MISSING  {m}")
        for p, r in bad:
            print(f"  BROKEN   {p}: {r}")
        total_bad += len(bad) + len(videos.missing)
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(training.command(main))
