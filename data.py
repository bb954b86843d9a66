"""
data.py -- everything between a video file and a GPU batch, shared by cvrl.py, lss.py and eval_linear.py.

Read it top to bottom:
  1. decoding      probe() and read_frames(): PyAV, seek to the keyframe before the first wanted frame, decode
                   forward, keep only wanted frames (matched by timestamp), convert only those to RGB, straight
                   into the output array; clips in one GOP (CVRL's pair) share one pass.
  2. datasets      split files -> a VideoList (paths, labels, classes, missing): class-per-folder, UCF101,
                   HMDB51, Kinetics CSV, the built-in synthetic action videos, and any folder of unlabeled videos
                   (listed once and indexed in the cache); --dataset auto decides which from the folder.
  3. synthetic     procedurally generated action videos (motion carries the label), written as real H.264 files;
                   SyntheticWorld holds every knob of them (trail, scenes, camera, sizes).
  4. samplers      which frames make a clip: one random clip, K uniform clips; cvrl.py plugs in its own pair sampler.
  5. dataset       a torch Dataset that opens a video once, samples clips, decodes them, and skips-and-reports
                   unreadable files; an epoch sampler that gives every item its own seed; the DataLoader factory.
  6. augmentation  batched, on the device: random resized crop (one roi_align for the whole batch), flip, colour
                   jitter in random order, grayscale, blur, solarize -- parameters drawn per clip and shared by all
                   its frames (temporally consistent), or per frame (the CVRL ablation).
Tools that work on datasets live in scripts/: dataset.py (write the synthetic set, check a dataset), reencode.py
(re-encode for fast random access), show.py (a picture of what a method trains on).

Tensor layouts: a decoded clip is uint8 (T, H, W, 3) -- PyAV's layout; a batch handed to the augmentation is uint8
(B, C, T, H, W) -- the 3D-CNN layout; the augmentation returns float (B, C, T, h, w). lss.py rearranges to the ViT
layout (B, T, C, H, W) itself.
"""
from __future__ import annotations

import bisect
import csv
import functools
import gzip
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torchvision.ops import roi_align
from tqdm import tqdm

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv", ".wmv")


# ----------------------------------------------------------------------------------------------------------------------
# 1. decoding
# ----------------------------------------------------------------------------------------------------------------------

class VideoError(Exception):
    """A video that cannot be used: unreadable, truncated, no video stream, or too short. Carries the path."""

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class VideoInfo:
    num_frames: int   # frames in the video (from the container when trustworthy, else counted from packets)
    fps: float        # average frame rate; frame i is shown at time i / fps (nearest frame for variable rate)
    width: int
    height: int
    duration: float   # num_frames / fps, seconds
    rotation: int = 0  # display rotation from the container (phone videos), counter-clockwise degrees; frames come out upright


def _open(path):
    """Open a container, turning FFmpeg's many error types into one VideoError that names the file."""
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes): an interrupted download or copy?")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        why = getattr(e, "strerror", None) or str(e)  # FFmpeg's message without the path, which VideoError names
        raise VideoError(path, f"cannot be opened as a video ({type(e).__name__}: {why}); truncated or not a video?") from e
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream (audio only?)")
    return container


class _Timeline:
    """How frame indices map to the stream's timestamps, learned from the container without decoding a frame.
    start_pts: where frame 0 sits: the earliest presentation timestamp after the first keyframe (not always 0: an
        AVI with B-frames starts at 1, an MP4 with an edit list anywhere), what a sequential decode shows first
        (packets marked as discarded, before an edit list's start, are decoded for reference, never shown).
    keyframe_between(lo, hi): is there a keyframe among frames lo..hi? Only a speed decision (decode through a gap
        or seek over it). From the packets when the stream was demuxed anyway (WebM, MKV), else from the demuxer's
        index (MP4, AVI; decode times, up to 2 frames early, which `_split_runs` allows for). None: not known."""

    def __init__(self, start_pts: int, tb: float, fps: float, delay: int, keyframes: list[int] | None, index,
                 from_start: bool = False):
        self.start_pts, self.tb, self.fps, self.delay = start_pts, tb, fps, delay
        self.keyframes, self.index = keyframes, index  # sorted frame indices | av IndexEntries | None
        self.from_start = from_start  # decode every run from the start of the file (see _stream_info)

    def keyframe_between(self, lo: int, hi: int) -> bool | None:
        if self.keyframes is None and self.index is None:
            return None
        if self.keyframes is not None:
            j = bisect.bisect_left(self.keyframes, lo)
            return j < len(self.keyframes) and self.keyframes[j] <= hi
        index = self.index
        to_ts = lambda i: i / self.fps / self.tb + self.start_pts - self.delay  # noqa: E731  frame index -> index time
        j = bisect.bisect_left(index, to_ts(lo - 0.5), key=lambda e: e.timestamp)
        end = to_ts(hi + 0.5)
        while j < len(index) and index[j].timestamp <= end:
            if index[j].is_keyframe and not index[j].is_discard:
                return True
            j += 1
        return False


_REORDER_WINDOW = 32  # packets demuxed to find the first frame shown: H.264/HEVC reorder at most 16 frames deep


def _stream_info(container, stream, path, first_frame: bool = False) -> tuple[VideoInfo, _Timeline]:
    """Read the header and the first packets (demux only, no decoding), count frames if the header does not say ->
    (info, _Timeline). The display rotation needs a decoded frame: `first_frame=True` (probe) decodes one for it."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(path, "has no frame rate in its header")
    fps, tb = float(rate), stream.time_base
    # Frame count. MP4/AVI headers carry it; WebM/MKV/TS report 0, and then we count packets (a full demux, still
    # no decode: fast). A header can over-report (a truncated file): read_frames then raises for the missing frames.
    num_frames = int(stream.frames or 0)
    count = num_frames <= 0
    counted, key_pts, shown, delay = 0, [], [], 0
    ran_out = True  # the scan reached the end of the packets (or a read error) instead of stopping early
    try:
        for packet in container.demux(stream):  # right after opening, the demuxer stands at the start of the file
            if not packet.size or packet.pts is None:
                continue
            counted += 1
            if packet.is_keyframe:
                if not count and shown and key_pts:  # the second GOP begins: the first frame shown is known
                    ran_out = False
                    break
                if not key_pts:
                    delay = packet.pts - packet.dts if packet.dts is not None else 0
                key_pts.append(packet.pts)
            if not key_pts:
                continue  # before the first keyframe: the decoder cannot show these
            if not packet.is_discard and len(shown) < _REORDER_WINDOW:
                shown.append(packet.pts)
            elif not count and len(shown) >= _REORDER_WINDOW:
                ran_out = False
                break
    except av.error.FFmpegError:
        pass  # a truncated or corrupt tail: keep what could be read; reading the frames decides what is missing
    if not shown:
        raise VideoError(path, "contains no decodable frame (no keyframe among its packets)")
    start_pts = min(shown)
    if count:
        num_frames = counted
        if num_frames == 0 and stream.duration and tb:
            num_frames = int(round(float(stream.duration * tb) * fps))
    if num_frames <= 0:
        raise VideoError(path, "has no frames")
    keyframes = sorted(round(float((p - start_pts) * tb) * fps) for p in key_pts) if count else None
    index = stream.index_entries if not count and len(stream.index_entries) >= num_frames else None
    # Fewer packets than the header promises, found while reading the first GOP: a tiny or truncated file. Demuxing
    # it to its end can enter a damaged last packet into the demuxer's index as a keyframe (AVI does), and a seek
    # would then land on it; such a file is read from its start every time, as a sequential decode would.
    from_start = ran_out and not count and counted < num_frames
    timeline = _Timeline(start_pts, float(tb), fps, delay, keyframes, index, from_start)
    cc = stream.codec_context
    width, height, rotation = cc.width, cc.height, 0
    if first_frame:
        try:
            container.seek(0)  # the scan above has demuxed past the start
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as e:
            raise VideoError(path, f"the first frame cannot be decoded ({type(e).__name__}: {e})") from e
        if first is None:
            raise VideoError(path, "contains no decodable frame")
        rotation = int(getattr(first, "rotation", 0) or 0) % 360
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    return VideoInfo(num_frames, fps, width, height, num_frames / fps, rotation), timeline


def probe(path) -> VideoInfo:
    """Frame count, fps, size (as displayed) and duration of a video. Raises VideoError (with the path) if unusable."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return _stream_info(container, stream, path, first_frame=True)[0]


def _to_rgb(frame, size, reformatter: VideoReformatter):
    """av.VideoFrame -> uint8 (H, W, 3), upright. With `size=(H, W)` the frame is scaled (swscale, area) to cover the
    canvas and centre-cropped: datasets mix 4:3, 16:9 and portrait videos. Phone videos stored sideways with a display
    rotation (`frame.rotation`) are turned upright, as a player would. `reformatter` is reused for a whole run, and
    swscale runs on one thread, as a DataLoader worker is one core's worth of work (docs/data.md)."""
    k = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # np.rot90 turns counter-clockwise for k > 0
    if size is None:
        img = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        return np.ascontiguousarray(np.rot90(img, k)) if k else img
    H, W = size if k % 2 == 0 else size[::-1]  # scale the stored frame to the rotated canvas
    s = max(H / frame.height, W / frame.width)
    h, w = max(H, round(frame.height * s)), max(W, round(frame.width * s))
    img = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA", threads=1).to_ndarray()
    y0, x0 = (h - H) // 2, (w - W) // 2
    img = img[y0:y0 + H, x0:x0 + W]
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def _split_runs(wanted: list[int], info: VideoInfo, timeline: _Timeline, max_gap_s: float) -> list[list[int]]:
    """Split the sorted wanted frames into runs, each decoded after one seek. A new run starts only where a keyframe
    lies inside the gap (seeking to it costs less than decoding through): two clips in one GOP (CVRL's pair, mostly)
    are one pass. Keyframes within 2 frames of either end do not count (index positions can be 2 frames early);
    without keyframe positions, gaps longer than `max_gap_s` seconds start a new run."""
    runs, run = [], [wanted[0]]
    for i in wanted[1:]:
        a = run[-1]
        split = timeline.keyframe_between(a + 2, i - 2) if i - a > 3 else False
        if split is None:
            split = (i - a) / info.fps > max_gap_s
        if split:
            runs.append(run)
            run = []
        run.append(i)
    runs.append(run)
    return runs


def _decode_indices(container, stream, path, info: VideoInfo, timeline: _Timeline, indices: Sequence[int],
                    size=None, max_gap_s: float = 1.0, stats: dict | None = None) -> np.ndarray:
    """Decode the frames at `indices` (presentation order, 0-based) from an open container -> uint8 (len(indices), H,
    W, 3), each frame converted once, straight into its row(s). Frame i is the one shown at time i / fps, matched by
    pts (not by where a seek landed): at a constant frame rate exactly the i-th frame of a sequential decode, else the
    nearest. Each run (`_split_runs`) is one seek and a decode to its last frame. `stats`: decoded frames, seeks."""
    tb = float(stream.time_base)
    stats = {} if stats is None else stats
    rows: dict[int, list[int]] = {}  # frame index -> the rows of the output that show it
    for r, i in enumerate(int(i) for i in indices):
        rows.setdefault(i, []).append(r)
    wanted = sorted(rows)
    if wanted[0] < 0:
        raise IndexError(f"negative frame index {wanted[0]} for {path}")
    if wanted[-1] >= info.num_frames:
        raise IndexError(f"frame {wanted[-1]} asked for, but {path} has {info.num_frames} frames (0..{info.num_frames - 1})")
    out = _Output(len(indices), rows)

    def seek(t0: float, margin):  # to the keyframe before time t0 - margin; margin None: the start of the file
        if margin is None:
            container.seek(0)
        else:
            ts = max(int((t0 - margin) / tb) + timeline.start_pts, 0)
            container.seek(ts, stream=stream, backward=True, any_frame=False)

    for run in _split_runs(wanted, info, timeline, max_gap_s):
        targets = [i / info.fps for i in run]  # seconds since frame 0
        for margin in ((None,) if timeline.from_start else (0.0, 1.0, 5.0, None)):
            # Always seek, also for frame 0: reading the header has already demuxed the first packets. If the
            # demuxer lands after the first wanted frame (AVI indexes by decode time, mislabelled keyframes, a bad
            # index), seek further back; the last resort is the very start of the file, which always works.
            try:
                seek(targets[0], margin)
            except av.error.FFmpegError:
                continue  # some demuxers refuse some seeks: try further back
            stats["seeks"] = stats.get("seeks", 0) + 1
            status = _decode_run(container, stream, path, info, timeline.start_pts, run, targets, size, stats, out)
            if status == "redo":  # the same position again, every frame decoded this time
                stats["redone"] = stats.get("redone", 0) + 1
                seek(targets[0], margin)
                status = _decode_run(container, stream, path, info, timeline.start_pts, run, targets, size, stats,
                                     out, skip=False)
            if status != "overshoot":
                break
        else:
            raise VideoError(path, f"could not position the decoder at frame {run[0]}")
    return out.array


class _Output:
    """The array read_frames returns, allocated at the first frame; each frame copied into every row that shows it."""

    def __init__(self, n: int, rows: dict[int, list[int]]):
        self.n, self.rows, self.array = n, rows, None

    def put(self, i: int, img: np.ndarray):
        if self.array is None:
            self.array = np.empty((self.n, *img.shape), np.uint8)  # (T, H, W, 3)
        for r in self.rows[i]:
            self.array[r] = img


def _decode_run(container, stream, path, info, start_pts, run, targets, size, stats, out: _Output,
                skip: bool = True) -> str:
    """Decode forward from the current position and give each target time the nearest decoded frame: frames come in
    presentation order, so a target is settled as soon as a frame at or after it appears (that frame or the previous
    one). Returns "ok", "overshoot" (the first frame is after the first target: nothing written) or "redo".
    With `skip`, non-reference frames (most B-frames: nothing is predicted from them) more than 3/4 of a frame from
    every target are not decoded. At a constant frame rate none of them can be nearest to a target; at a variable
    one it could, so a target settled by a frame that far away makes the run decode again in full ("redo")."""
    tb = float(stream.time_base)
    half, far = 0.5 / info.fps, 0.75 / info.fps
    converted: dict[int, np.ndarray] = {}  # pts -> rgb, so a frame that settles two targets is converted once
    reformatter = VideoReformatter()        # one swscale context for the run (see _to_rgb)
    codec = stream.codec_context
    k, prev, prev_t, first_t, farthest = 0, None, None, None, 0.0

    def take(frame):
        if frame.pts not in converted:
            converted.clear()  # frames arrive in time order: only the latest conversion can be wanted again
            converted[frame.pts] = _to_rgb(frame, size, reformatter)
        return converted[frame.pts]

    def skippable(pts):  # no target within 3/4 of a frame of this packet's time
        if pts is None:
            return False
        t = (pts - start_pts) * tb
        j = bisect.bisect_left(targets, t)
        return (j == len(targets) or targets[j] - t > far) and (j == 0 or t - targets[j - 1] > far)

    error = None
    try:
        for packet in container.demux(stream):  # the last packet is empty: it drains the decoder's delayed frames
            if skip:
                codec.skip_frame = "NONREF" if skippable(packet.pts) else "DEFAULT"
            for frame in packet.decode():
                stats["decoded"] = stats.get("decoded", 0) + 1
                if frame.pts is None:
                    continue
                t = (frame.pts - start_pts) * tb
                if first_t is None:
                    first_t = t
                    if t > targets[0] + half:
                        return "overshoot"
                    stats["rotation"] = int(getattr(frame, "rotation", 0) or 0) % 360
                while k < len(run) and targets[k] <= t + 1e-9:
                    tau = targets[k]
                    use_prev = prev is not None and (tau - prev_t) < (t - tau)
                    out.put(run[k], take(prev) if use_prev else take(frame))
                    farthest = max(farthest, (tau - prev_t) if use_prev else (t - tau))
                    k += 1
                if k == len(run):
                    break
                prev, prev_t = frame, t
            if k == len(run):
                break
    except av.error.FFmpegError as e:
        error = e  # a corrupt or truncated tail: the frames settled so far are good, the rest are decided below
    finally:
        if skip:
            codec.skip_frame = "DEFAULT"
    if skip and (farthest > far or k < len(run)):
        return "redo"  # a target far from every frame (variable frame rate), or frames missing: decode it all
    if k == len(run):
        return "ok"
    # Decoding ended before some wanted frames. The last decoded frame stands in for a target only if it is the
    # nearest frame (within half a frame, or the file really holds frame i: variable frame rate); anything else is
    # a frame the header promises and the file lacks (a truncated download): an error, never a made-up frame.
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    fix = "re-download or re-encode the file"
    if prev is None:  # the seek landed where no data is: past a truncated end, or in a corrupt stretch
        real = _count_frames(container, stream)
        if run[0] >= real - (error is not None):  # (a failing last packet is the cut itself)
            raise VideoError(path, f"truncated: frame {run[0]} was asked for, but the file holds {real} of the "
                                   f"{info.num_frames} frames its header promises{why}; {fix}")
        raise VideoError(path, f"no frame could be decoded at or after frame {run[0]}{why}")
    last = round(prev_t * info.fps)  # index of the last decoded frame
    real = None
    for i, tau in zip(run[k:], targets[k:]):
        if tau - prev_t > half + 1e-9:
            if error is None and real is None:
                real = _count_frames(container, stream)
            if error is not None or i >= real:
                ends = "ends" if error is None else "fails"
                raise VideoError(path, f"truncated: frame {i} was asked for, but decoding {ends} after frame {last} "
                                       f"of the {info.num_frames} its header promises{why}; {fix}")
        out.put(i, take(prev))
    return "ok"


def _count_frames(container, stream) -> int:
    """Frames the file really holds: its video packets, counted by demuxing from the start (no decoding: a few ms),
    up to the first read error. Only needed when decoding ends before a wanted frame."""
    n = 0
    try:
        container.seek(0)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                n += 1
    except av.error.FFmpegError:
        pass
    return n


def read_frames(path, indices: Sequence[int], size=None, thread_count: int = 1, stats: dict | None = None) -> torch.Tensor:
    """Frames at 0-based presentation `indices` (any order, repeats allowed) -> uint8 tensor (T, H, W, 3), bit-exact
    with a sequential `to_ndarray(format="rgb24")` decode for constant frame rate files; seeks to the keyframe before
    the first wanted frame. `size=(H, W)` scales each frame to cover that canvas and centre-crops it. One thread: the
    DataLoader runs a decoder per worker (pools on top oversubscribe, and can hang: PyAV#1962). Raises VideoError for
    unusable files and for a frame the header promises but the file lacks ("truncated: ..."): never a made-up frame."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_frames needs at least one index")
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = thread_count
        info, timeline = _stream_info(container, stream, path)
        frames = _decode_indices(container, stream, path, info, timeline, indices, size, stats=stats)
    return torch.from_numpy(frames)  # (T, H, W, 3)


def _read_clip_frames(path, sampler, rng, size=None, min_frames: int = 1,
                      stats: dict | None = None) -> tuple[np.ndarray, list[int], VideoInfo]:
    """read_clips' work: the frames of all clips, one after another in one array (N, H, W, 3), and each clip's
    length. VideoDataset reshapes it to (K, T, H, W, 3) without a copy."""
    stats = {} if stats is None else stats
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        info, timeline = _stream_info(container, stream, path)
        if info.num_frames < min_frames:
            raise VideoError(path, f"too short: {info.num_frames} frames, a clip needs {min_frames}")
        clips = sampler(info.num_frames, info.fps, rng)
        flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in clips])
        frames = _decode_indices(container, stream, path, info, timeline, flat, size, stats=stats)
    if stats.get("rotation") in (90, 270):  # the header gives the stored size; the frames know their display rotation
        info.width, info.height, info.rotation = info.height, info.width, stats["rotation"]
    return frames, [len(c) for c in clips], info


def read_clips(path, sampler, rng, size=None, min_frames: int = 1,
               stats: dict | None = None) -> tuple[list[torch.Tensor], VideoInfo]:
    """Open a video once, let `sampler(num_frames, fps, rng)` choose clips (index arrays), decode the union of their
    frames (each once) -> ([uint8 (T, H, W, 3) per clip], VideoInfo). Fewer than `min_frames` frames: VideoError."""
    frames, lengths, info = _read_clip_frames(path, sampler, rng, size, min_frames, stats)
    return list(torch.from_numpy(frames).split(lengths)), info  # views of one array, clip by clip


def check_video(path):
    """(path, None) when the first, middle and last frames decode; (path, reason) otherwise."""
    try:
        info = probe(path)
        read_frames(path, sorted({0, info.num_frames // 2, info.num_frames - 1}))
        return path, None
    except VideoError as e:
        return path, e.reason
    except Exception as e:  # noqa: BLE001
        return path, f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------------------------------
# 2. datasets: split files -> VideoList
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class VideoList:
    """One split of a dataset: what to read and what it is. `missing` lists entries of the split file that are not
    on disk; they are reported, never silently dropped."""
    paths: list[str]
    labels: list[int]
    classes: list[str]
    missing: list[str] = field(default_factory=list)
    name: str = ""
    ignored: int = 0  # unlabeled folders: files under the root that are not videos (counted, reported, not used)

    def __len__(self):
        return len(self.paths)

    def subset(self, fraction: float, seed: int = 0) -> "VideoList":
        """A class-stratified random fraction of the videos (the 'more data' study uses 25/50/100%); without
        classes (an unlabeled folder), a plain random fraction."""
        rng = np.random.default_rng(seed)
        keep = []
        labels = np.asarray(self.labels) if self.classes else np.zeros(len(self.paths), np.int64)
        for c in range(max(1, len(self.classes))):
            idx = np.flatnonzero(labels == c)
            keep += list(rng.permutation(idx)[:max(1, round(len(idx) * fraction))] if len(idx) else [])
        keep.sort()
        return VideoList([self.paths[i] for i in keep], [self.labels[i] for i in keep], self.classes, self.missing,
                         f"{self.name} ({fraction:.0%})", self.ignored)


class DatasetError(Exception):
    """A dataset that cannot be used at all (bad root, wrong annotation format, empty split): refuse at start."""


def _lines(path) -> list[str]:
    # utf-8-sig drops a BOM; strip() drops the \r of CRLF files that circulate for UCF101.
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [ln.strip() for ln in f if ln.strip()]


# The folder index: every video under a root, listed once (os.walk) and kept in the cache dir; a later start re-uses
# it while no folder's mtime changed (adding, removing or renaming a file changes its folder's), a stat per folder
# instead of a listing (docs/data.md). A folder modified less than INDEX_RACY_S before the listing is never trusted
# (FAT keeps mtimes to 2 s: git's "racily clean" rule). Hidden files (".DS_Store", "._IMG_0001.MOV") are skipped.
INDEX_VERSION = 1
INDEX_RACY_S = 2.0


@dataclass
class FolderIndex:
    root: str                 # the root as given (paths are built from it)
    rel: list[str]            # videos, relative posix paths, sorted by path components (as sorted(Path) is)
    ignored: int              # other files (not a video extension, or hidden), counted and not used
    ignored_examples: list[str]
    reused: bool              # read from the cache (True) or listed now (False)

    @property
    def paths(self) -> list[str]:
        return [os.path.join(self.root, r) for r in self.rel]


def _index_path(root) -> Path:
    key = hashlib.sha1(os.path.realpath(root).encode()).hexdigest()[:16]
    return cache_dir() / "index" / f"{key}.json.gz"


def _index_is_current(saved: dict, root) -> bool:
    racy = saved["built_ns"] - int(INDEX_RACY_S * 1e9)
    for rel, mtime in saved["dirs"].items():
        try:
            now = os.stat(os.path.join(root, rel)).st_mtime_ns
        except OSError:
            return False  # a folder was removed or renamed
        if now != mtime or mtime >= racy:
            return False
    return True


def index_folder(root, progress=True) -> FolderIndex:
    """Every video under `root`, any depth, from the cache when no folder changed since it was listed (see above).
    Nothing is written under root: the index lives in cache_dir()/index/."""
    root = str(root)
    path = _index_path(root)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("version") == INDEX_VERSION and saved.get("root") == os.path.realpath(root) \
                and _index_is_current(saved, root):
            return FolderIndex(root, saved["videos"], saved["ignored"], saved["ignored_examples"], True)
    except (OSError, ValueError, KeyError, EOFError):
        pass  # no index yet, or an unreadable one: list the folder
    built_ns = time.time_ns()
    dirs, videos, ignored, examples = {}, [], 0, []
    # delay: the bar appears only when listing takes more than a second (a large or slow folder)
    bar = tqdm(desc=f"indexing {root}", unit=" files", delay=1.0, disable=not progress)
    for d, subdirs, files in os.walk(root):  # top-down: pruning subdirs in place skips hidden folders
        subdirs[:] = [s for s in subdirs if not s.startswith(".")]
        rel_d = os.path.relpath(d, root).replace(os.sep, "/")
        dirs[rel_d] = os.stat(d).st_mtime_ns
        for name in files:
            rel = name if rel_d == "." else f"{rel_d}/{name}"
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                videos.append(rel)
            else:
                ignored += 1
                if len(examples) < 5:
                    examples.append(rel)
        bar.update(len(files))
    bar.close()
    videos.sort(key=lambda r: r.split("/"))
    saved = {"version": INDEX_VERSION, "root": os.path.realpath(root), "built_ns": built_ns, "dirs": dirs,
             "videos": videos, "ignored": ignored, "ignored_examples": examples}
    try:  # a temporary file renamed into place: torchrun ranks may index at the same time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:  # 240k paths: 6.5 MB of JSON, 0.7 gzipped
            json.dump(saved, f)
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot save the index of {root} in {path.parent} ({e}); it will be listed again next time",
              file=sys.stderr)
    return FolderIndex(root, videos, ignored, examples, False)


def _find_videos(root) -> list[Path]:
    return [Path(p) for p in index_folder(root).paths]


def _check_root(root, dataset):
    if root is None:
        raise DatasetError(f"--dataset {dataset} needs --data ROOT (the folder with the videos)")
    if os.path.isfile(root):
        raise DatasetError(f"--data {root} is a file, not a folder: pass the folder that holds the videos (--data "
                           f"{os.path.dirname(os.path.abspath(root))} takes every video in it)")
    if not os.path.isdir(root):
        raise DatasetError(f"--data {root} does not exist (or is not a folder); check the path" + (
            ". To generate the synthetic videos into a new folder there, add --dataset synthetic" if dataset == "auto"
            else ""))


def _resolve(root, rel, index):
    """Path of split-file entry `rel` under root: exact first, then case-insensitively (UCF101 copies differ in the
    case of 'HandStandPushups'), then by basename (HMDB51 split files name only the file)."""
    p = os.path.join(root, rel)
    if os.path.exists(p):
        return p
    if index is None:
        return None
    return index["rel"].get(rel.replace("\\", "/").lower()) or index["base"].get(os.path.basename(rel).lower())


def _file_index(root):
    rel, base = {}, {}
    for p in _find_videos(root):
        r = p.relative_to(root).as_posix().lower()
        rel[r] = str(p)
        base.setdefault(p.name.lower(), str(p))
    return {"rel": rel, "base": base}


def folder_split(root, split="train") -> VideoList:
    """Class-per-folder: ROOT/<split>/<class>/*.mp4 when ROOT has train/ and test/ (or val/) subfolders, else
    ROOT/<class>/* (training only). Classes are the sorted folder names, so an empty class folder keeps its id."""
    _check_root(root, "folder")
    sub = {"train": ["train"], "test": ["test", "val", "validate"]}[split]
    base = next((os.path.join(root, s) for s in sub if os.path.isdir(os.path.join(root, s))), None)
    if base is None:
        if split == "test":
            raise DatasetError(f"{root} has no test/ (or val/) subfolder: a folder dataset needs ROOT/train/<class>/ "
                               f"and ROOT/test/<class>/ to be evaluated")
        base = root
    train_base = next((os.path.join(root, s) for s in ["train"] if os.path.isdir(os.path.join(root, s))), base)
    classes = sorted(d for d in os.listdir(train_base) if os.path.isdir(os.path.join(train_base, d))
                     and not d.startswith("."))
    if not classes:
        raise DatasetError(f"{train_base} has no class folders: expected {train_base}/<class>/<video>. For videos "
                           f"without labels, pass --data {root} alone (or --dataset unlabeled): every video under it "
                           f"is used for pretraining")
    by_class = {}  # one index of the split's folder, grouped by the first path component (the class folder)
    for rel in index_folder(base).rel:
        first, _, rest = rel.partition("/")
        if rest:
            by_class.setdefault(first, []).append(os.path.join(base, rel))
    paths, labels = [], []
    for c, name in enumerate(classes):
        vids = by_class.get(name, [])
        if not vids:
            print(f"warning: class folder {os.path.join(base, name)} is empty or missing", file=sys.stderr)
        paths += vids
        labels += [c] * len(vids)
    return VideoList(paths, labels, classes, [], f"folder:{base}")


def unlabeled_split(root) -> VideoList:
    """Every video under ROOT, any depth, unlabeled (labels -1, no classes): for pretraining. Other files are counted
    and reported, never opened; broken videos are found when read (training skips and lists them)."""
    _check_root(root, "unlabeled")
    index = index_folder(root)
    if index.ignored:
        shown = ", ".join(index.ignored_examples) + (" ..." if index.ignored > len(index.ignored_examples) else "")
        files = f"{index.ignored} file{'s' if index.ignored != 1 else ''}"
        print(f"note: {files} under {root} ignored (not videos, or hidden): {shown}", file=sys.stderr)
    paths = index.paths
    return VideoList(paths, [-1] * len(paths), [], [], f"unlabeled:{root}", ignored=index.ignored)


DATASETS = ("synthetic", "folder", "unlabeled", "ucf101", "hmdb51", "kinetics")


def resolve_dataset(dataset, root) -> tuple[str, str]:
    """--dataset auto (or None) -> the kind, decided from the folder, and a one-line explanation to print:
        no --data: the built-in synthetic dataset (cached); ROOT/classes.txt: a synthetic dataset; ROOT/train/ +
        ROOT/test/ (or val/): a labelled class-per-folder dataset; anything else: every video under ROOT, unlabeled.
    A --data that does not exist is refused: auto never generates into a folder the user named."""
    if dataset not in (None, "auto"):
        if dataset not in DATASETS:
            raise DatasetError(f"unknown dataset {dataset!r}: choose auto, {', '.join(DATASETS)}")
        return dataset, ""
    if root is None:
        return "synthetic", ""
    _check_root(root, "auto")
    if os.path.exists(os.path.join(root, "classes.txt")):
        return "synthetic", f"data: {root} has classes.txt: the synthetic dataset (--dataset synthetic)"
    if os.path.isdir(os.path.join(root, "train")) and any(
            os.path.isdir(os.path.join(root, s)) for s in ("test", "val", "validate")):
        return "folder", (f"data: {root} has train/ and test/: a labelled dataset, one folder per class "
                          f"(--dataset folder)")
    return "unlabeled", (f"data: {root} has no classes.txt and no train/ + test/ folders: every video under it, "
                         f"unlabeled, for pretraining (--dataset unlabeled)")


def decide_dataset(cfg):
    """A script's config with --dataset auto replaced by the kind decided from --data (resolve_dataset); the
    decision is printed once (by rank 0 under torchrun). The checkpoint then records the kind, not "auto"."""
    from dataclasses import replace
    kind, why = resolve_dataset(cfg.dataset, cfg.data)
    if why and os.environ.get("RANK", "0") == "0":
        print(why)
    return replace(cfg, dataset=kind)


UNLABELED_HINT = ("lay labelled videos out as ROOT/train/<class>/<video> and ROOT/test/<class>/<video> (test/ may be "
                  "val/), or use --dataset ucf101|hmdb51 --annotations DIR, or --dataset kinetics --annotations CSV")


def require_labels(dataset, root, what: str, advice: str = ""):
    """Refuse an unlabeled folder where labels are needed (linear probe, zero-shot), naming the layout that works."""
    if dataset == "unlabeled":
        raise DatasetError(f"{what} needs labels, and {root} is a folder of unlabeled videos (no classes.txt, no "
                           f"train/ + test/ folders): {UNLABELED_HINT}. {advice}".strip())


def list_split(root, list_file, classes_file) -> VideoList:
    """`<relative path> <label>` per line (the synthetic dataset's train.txt / test.txt) plus classes.txt."""
    classes = _lines(classes_file)
    paths, labels, missing = [], [], []
    for ln in _lines(list_file):
        rel, lab = ln.rsplit(maxsplit=1)
        p = os.path.join(root, rel)
        (paths.append(p), labels.append(int(lab))) if os.path.exists(p) else missing.append(p)
    return VideoList(paths, labels, classes, missing, f"list:{list_file}")


def ucf101_split(root, annotations, fold=1, split="train") -> VideoList:
    """UCF101 with the official ucfTrainTestlist/: labels from classInd.txt (sorted(os.listdir) would swap HammerThrow/
    Hammering), test lists' from the folder part; files matched exactly, then case-insensitively (HandstandPushups)."""
    _check_root(root, "ucf101")
    if annotations is None or not os.path.isdir(annotations):
        raise DatasetError(f"--dataset ucf101 needs --annotations DIR, the ucfTrainTestlist/ folder; got {annotations!r}")
    ci = os.path.join(annotations, "classInd.txt")
    lst = os.path.join(annotations, f"{'trainlist' if split == 'train' else 'testlist'}0{fold}.txt")
    if not os.path.exists(ci) or not os.path.exists(lst):
        hint = (" It looks like an HMDB51 split folder: use --dataset hmdb51."
                if any(n.endswith(f"_test_split{fold}.txt") for n in os.listdir(annotations)) else "")
        raise DatasetError(f"{annotations} is not a UCF101 ucfTrainTestlist folder: it needs classInd.txt and "
                           f"{os.path.basename(lst)} (from UCF101TrainTestSplits-RecognitionTask.zip).{hint}")
    classes, by_name = [], {}
    for ln in _lines(ci):
        idx, name = ln.split(maxsplit=1)
        classes.append(name.strip())
        by_name[name.strip().lower()] = int(idx) - 1
    paths, labels, missing, index = [], [], [], None
    for ln in _lines(lst):
        parts = ln.split()
        rel = parts[0]
        folder = rel.replace("\\", "/").split("/")[0].lower()
        if folder not in by_name:
            raise DatasetError(f"{lst}: entry {rel!r} names class folder {folder!r}, which is not in classInd.txt")
        label = by_name[folder]
        p = _resolve(root, rel, None)
        if p is None:
            index = index or _file_index(root)
            p = _resolve(root, rel, index)
        (paths.append(p), labels.append(label)) if p else missing.append(rel)
    return VideoList(paths, labels, classes, missing, f"ucf101 fold {fold} {split}")


def hmdb51_split(root, annotations, fold=1, split="train") -> VideoList:
    """HMDB51 split files `<class>_test_split<k>.txt`: `<video>.avi <code>` with 1 = train, 2 = test, 0 = unused;
    classes sorted by name (no official classInd); files matched by basename under ROOT (never globbed: odd names)."""
    _check_root(root, "hmdb51")
    if annotations is None or not os.path.isdir(annotations):
        raise DatasetError(f"--dataset hmdb51 needs --annotations DIR, the folder of <class>_test_split<k>.txt files; "
                           f"got {annotations!r}")
    suffix = f"_test_split{fold}.txt"
    files = sorted(n for n in os.listdir(annotations) if n.endswith(suffix))
    if not files:
        hint = " It looks like UCF101's ucfTrainTestlist: use --dataset ucf101." if os.path.exists(
            os.path.join(annotations, "classInd.txt")) else ""
        raise DatasetError(f"{annotations} has no *{suffix} files: not an HMDB51 split folder "
                           f"(test_train_splits.rar).{hint}")
    classes = [n[: -len(suffix)] for n in files]
    code = {"train": "1", "test": "2"}[split]
    index = _file_index(root)
    paths, labels, missing = [], [], []
    for c, n in enumerate(files):
        for ln in _lines(os.path.join(annotations, n)):
            parts = ln.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{n}: line {ln!r} is not '<video> <0|1|2>'")
            if parts[1] != code:
                continue
            p = _resolve(root, os.path.join(classes[c], parts[0]), index)
            (paths.append(p), labels.append(c)) if p else missing.append(parts[0])
    return VideoList(paths, labels, classes, missing, f"hmdb51 fold {fold} {split}")


def kinetics_split(root, annotations, split="train") -> VideoList:
    """Kinetics CSV `label,youtube_id,time_start,time_end,split[,is_cc]`; clips `{id}_{start:06d}_{end:06d}.mp4` anywhere
    under ROOT. `--annotations`: one CSV, or a folder with train.csv and validate.csv. 'test' is the validation set
    (the test labels were never public); missing clips (gone from YouTube) are counted and reported."""
    _check_root(root, "kinetics")
    if annotations is None or not os.path.exists(annotations):
        raise DatasetError(f"--dataset kinetics needs --annotations, a Kinetics CSV or a folder of them; got {annotations!r}")
    if os.path.isdir(annotations):
        names = {"train": ["train.csv", "kinetics_train.csv"],
                 "test": ["validate.csv", "val.csv", "kinetics_val.csv", "kinetics_validate.csv"]}
        csvs = [os.path.join(annotations, n) for s in ("train", "test") for n in names[s]
                if os.path.exists(os.path.join(annotations, n))]
        if not csvs:
            raise DatasetError(f"{annotations} has no train.csv / validate.csv")
    else:
        csvs = [annotations]
    rows = []
    for c in csvs:
        with open(c, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise DatasetError(f"{c} is not a Kinetics CSV: header must contain {sorted(need)}, "
                                   f"got {reader.fieldnames}")
            for r in reader:
                s = (r.get("split") or ("train" if "train" in os.path.basename(c) else "validate")).strip()
                rows.append((r["label"].strip(), r["youtube_id"].strip(), int(float(r["time_start"])),
                             int(float(r["time_end"])), "train" if s == "train" else "test" if s in ("val", "validate") else s))
    classes = sorted({r[0] for r in rows if r[0]})
    cid = {c: i for i, c in enumerate(classes)}
    index = {p.name: str(p) for p in _find_videos(root)}
    paths, labels, missing = [], [], []
    for label, yid, t0, t1, s in rows:
        if s != split or not label:
            continue
        name = f"{yid}_{t0:06d}_{t1:06d}.mp4"
        p = index.get(name) or index.get(name[:-4] + ".mkv") or index.get(name[:-4] + ".webm")
        (paths.append(p), labels.append(cid[label])) if p else missing.append(name)
    return VideoList(paths, labels, classes, missing, f"kinetics {split}")


def load_split(dataset: str, root=None, annotations=None, fold: int = 1, split: str = "train",
               world: SyntheticWorld | None = None) -> VideoList:
    """The scripts' one entry point: `dataset` "auto" (or None) decided from the folder, `world` what generated videos
    look like. Refuses (DatasetError) a split with no usable video; reports missing files and goes on otherwise."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dataset, _ = resolve_dataset(dataset, root)
    if dataset == "synthetic":
        root = ensure_synthetic(root, world or SyntheticWorld())
        videos = list_split(root, os.path.join(root, f"{split}.txt"), os.path.join(root, "classes.txt"))
    elif dataset == "folder":
        videos = folder_split(root, split)
    elif dataset == "ucf101":
        videos = ucf101_split(root, annotations, fold, split)
    elif dataset == "hmdb51":
        videos = hmdb51_split(root, annotations, fold, split)
    elif dataset == "kinetics":
        videos = kinetics_split(root, annotations, split)
    elif split == "test":  # unlabeled
        raise DatasetError(f"{root} is a folder of unlabeled videos: it has no test split. To evaluate, "
                           f"{UNLABELED_HINT}")
    else:
        videos = unlabeled_split(root)
    if videos.missing:
        shown = ", ".join(videos.missing[:5]) + (" ..." if len(videos.missing) > 5 else "")
        print(f"warning: {len(videos.missing)} of {len(videos.missing) + len(videos)} videos named by the {split} split "
              f"of {videos.name} are not under {root}: {shown}", file=sys.stderr)
    if len(videos) == 0 and dataset == "unlabeled":
        raise DatasetError(f"no video files under {root} ({videos.ignored} other files; videos are recognised by "
                           f"their extension: {' '.join(VIDEO_EXTENSIONS)})")
    if len(videos) == 0:
        raise DatasetError(f"the {split} split of {videos.name or dataset} has no videos under {root}"
                           + (f" (all {len(videos.missing)} listed files are missing: is --data the right folder?)"
                              if videos.missing else ""))
    return videos


# ----------------------------------------------------------------------------------------------------------------------
# 3. synthetic action videos
# ----------------------------------------------------------------------------------------------------------------------
# Each video shows one convex shape whose *motion* is the label; appearance (shape, size, position, speed, phase) is
# random within every class, so a frame says little and a clip a lot. The classes are invariant under a horizontal
# flip (sideways is one class; rotation and orbit go either way): the augmentation never turns one into another.
# `nuisance` in [0, 1]: at 0 a white shape on black; raising it adds a textured background, colours, a distractor
# and a camera pan, a look that both clips of a video share: the shortcut by which contrastive learning can tell
# instances apart by appearance alone (the replication study measures it).

SYNTHETIC_CLASSES = ["static", "move_sideways", "move_up", "move_down", "rotate", "grow", "shrink", "orbit"]


@dataclass
class SyntheticWorld:
    """What the built-in synthetic videos look like and how many there are, every knob declared once. Each method's
    config holds one in its field `synthetic` (lss.py's has trails, scenes and a camera; cvrl.py's none), saved in
    the checkpoint and read back by synthetic_world(config); each field is a flag of the scripts (--trail 1)."""
    nuisance: float = 0.0           # synthetic videos: appearance nuisance 0..1 (texture, colour, distractor, pan)
    trail: float = 0.0              # synthetic videos: motion trail 0..2, faded earlier positions in every frame
    context: float = 0.0            # synthetic videos: share filmed in their action's usual scene (a ground in its hue)
    clutter: float = 0.0            # synthetic videos: the camera's grey textured background, strength U(0, clutter)
    noise: float = 0.0              # synthetic videos: the camera's sensor noise, std U(0, noise)
    video_size: int = 64            # synthetic videos: frame side in pixels
    video_frames: int = 48          # synthetic videos: frames per video
    fps: int = 16                   # synthetic videos: frame rate
    train_per_class: int = 60       # synthetic videos: training videos per class
    test_per_class: int = 50        # synthetic videos: test videos per class
    world_seed: int = 0             # synthetic videos: generator seed (another seed: other videos of the same world)


def synthetic_world(config: dict) -> SyntheticWorld:
    """The synthetic world of a run's config (config.json, a checkpoint's "config": its "synthetic" entry). Configs
    written before the world had a dataclass of its own carry its knobs at the top level (nuisance, trail)."""
    if "synthetic" in config:
        return SyntheticWorld(**config["synthetic"])
    return SyntheticWorld(nuisance=config.get("nuisance", 0.0), trail=config.get("trail", 0.0))


def _polygon_mask(cx, cy, radius, angle, sides, aspect, size, ss=2):
    """Anti-aliased coverage of a convex polygon on a size x size grid (ss x ss supersampling). (H, W) float."""
    n = size * ss
    g = (np.arange(n) + 0.5) / ss
    X, Y = np.meshgrid(g, g)
    a = angle + 2 * np.pi * np.arange(sides) / sides
    vx = cx + radius * aspect * np.cos(a) * np.cos(angle) - radius / aspect * np.sin(a) * np.sin(angle)
    vy = cy + radius * aspect * np.cos(a) * np.sin(angle) + radius / aspect * np.sin(a) * np.cos(angle)
    inside = np.ones((n, n), bool)
    for i in range(sides):  # counter-clockwise vertices: inside is to the left of every edge
        x0, y0, x1, y1 = vx[i], vy[i], vx[(i + 1) % sides], vy[(i + 1) % sides]
        inside &= (x1 - x0) * (Y - y0) - (y1 - y0) * (X - x0) >= 0
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _smooth_texture(rng, h, w, cells=6):
    """Low-frequency random texture in [0, 1] (bilinear upsampling of a coarse grid)."""
    g = torch.from_numpy(rng.random((1, 1, cells, cells), dtype=np.float32))
    return F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1).numpy()


def _hsv_colour(rng, saturation):
    h = rng.random()
    rgb = np.array([abs(h * 6 - 3) - 1, 2 - abs(h * 6 - 2), 2 - abs(h * 6 - 4)]).clip(0, 1)
    v = rng.uniform(0.7, 1.0)
    return v * ((1 - saturation) + saturation * rgb)


def synthetic_motion(label: int, rng: np.random.Generator, size=64, frames=48) -> dict:
    """The shape and its path for one synthetic video of class `label`: per-frame centre (cx, cy), radius and angle
    (arrays of length `frames`), and the shape's sides and aspect. Random within the class."""
    S, T = size, frames
    t = np.arange(T) / (T - 1)                      # normalised time 0..1
    sides = int(rng.choice([3, 4, 5, 4]))
    aspect = rng.choice([1.0, 1.0, 1.6])             # 1.6 makes a bar: rotation is visible even for a square
    r_lo, r_hi = 0.09 * S, 0.17 * S
    radius = np.full(T, rng.uniform(r_lo, r_hi))
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    m = r_hi + 2                                     # keep the shape inside the frame
    cx, cy = np.full(T, rng.uniform(m, S - m)), np.full(T, rng.uniform(m, S - m))
    name = SYNTHETIC_CLASSES[label]
    if name in ("move_sideways", "move_up", "move_down"):
        travel = rng.uniform(0.35, 0.75) * (S - 2 * m)
        a0 = rng.uniform(m, S - m - travel)
        path = a0 + travel * t
        if name == "move_sideways":
            cx = path if rng.random() < 0.5 else path[::-1].copy()
        else:  # image y grows downwards
            cy = path[::-1].copy() if name == "move_up" else path
    elif name == "rotate":
        angle = angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.6) * np.pi * t
    elif name in ("grow", "shrink"):
        r0, r1 = rng.uniform(r_lo * 0.8, r_lo * 1.1), rng.uniform(r_hi * 0.95, r_hi * 1.2)
        radius = r0 + (r1 - r0) * t if name == "grow" else r1 + (r0 - r1) * t
        m2 = r1 + 2
        cx, cy = np.full(T, rng.uniform(m2, S - m2)), np.full(T, rng.uniform(m2, S - m2))
    elif name == "orbit":
        R = rng.uniform(0.14, 0.24) * S
        c0x, c0y = rng.uniform(m + R, S - m - R), rng.uniform(m + R, S - m - R)
        phi = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(1.0, 2.0) * np.pi * t
        cx, cy = c0x + R * np.cos(phi), c0y + R * np.sin(phi)
    return dict(label=label, cx=cx, cy=cy, radius=radius, angle=angle, sides=sides, aspect=float(aspect))


# The motion trail: a faint onion skin of the shape's earlier positions (TRAIL_GHOSTS ghosts spaced TRAIL_SPAN /
# TRAIL_GHOSTS of the video apart, ghost j at intensity trail * TRAIL_DECAY^j), a static cue of the motion as motion
# blur is in a real frame. A video with a trail starts its motion one trail span early (not shown), so every frame
# has its whole trail. trail 0: none, and no pre-roll (the videos of before the knob); above 1, brighter ghosts.
TRAIL_GHOSTS, TRAIL_SPAN, TRAIL_DECAY = 5, 2 / 3, 0.6


def _trail_step(frames: int) -> int:
    return max(1, round(TRAIL_SPAN * (frames - 1) / TRAIL_GHOSTS))  # 16 frames: every 2nd; 48 frames: every 6th


def _shape_mask(p, i, S, shift=(0, 0)):
    return _polygon_mask(p["cx"][i] - shift[0], p["cy"][i] - shift[1], p["radius"][i], p["angle"][i], p["sides"],
                         p["aspect"], S)


def _trail_mask(p, i, S, trail, step, shift=(0, 0), masks=None):
    """Coverage of motion frame i's shape and, at `trail` > 0, its faded earlier positions every `step` frames
    (max over the ghosts)."""
    get = (lambda j: masks[j]) if masks is not None else (lambda j: _shape_mask(p, j, S, shift))  # noqa: E731
    mk = get(i)
    for j in range(1, TRAIL_GHOSTS + 1):
        if trail > 0 and i - step * j >= 0:
            mk = np.maximum(mk, min(1.0, trail * TRAIL_DECAY ** j) * get(i - step * j))
    return mk


def render_synthetic_video(label: int, rng: np.random.Generator, size=64, frames=48, nuisance=0.0,
                           trail=0.0, context=0.0, clutter=0.0, noise=0.0) -> np.ndarray:
    """One synthetic action video -> uint8 (T, H, W, 3): `trail` the trail's strength, `context` the chance of the
    action's usual scene (_context), `clutter` and `noise` the camera (_camera)."""
    S, T = size, frames
    t = np.arange(T) / (T - 1)
    step = _trail_step(T)
    pre = TRAIL_GHOSTS * step if trail > 0 else 0  # motion frames before the first one shown (see TRAIL_SPAN)
    p = synthetic_motion(label, rng, size, T + pre)  # the motion over pre + T frames; frame i is motion frame pre + i
    r_lo, r_hi = 0.09 * S, 0.17 * S
    m = r_hi + 2
    # appearance
    nz = float(nuisance)
    colour = _hsv_colour(rng, nz) if nz > 0 else np.ones(3)
    pad = int(np.ceil(0.5 * S)) if nz > 0 else 0
    if nz > 0:
        tex = _smooth_texture(rng, S + 2 * pad, S + 2 * pad)
        bg_col = _hsv_colour(rng, nz) * 0.6
        background = (nz * tex[..., None] * bg_col + (1 - nz) * 0.0).astype(np.float32)
        pan = rng.uniform(-1, 1, size=2) * nz * 0.3 * S * t[:, None]          # camera pan, pixels
        has_distractor = rng.random() < nz
        d_par = (rng.uniform(m, S - m), rng.uniform(m, S - m), rng.uniform(r_lo, r_hi), rng.uniform(0, 6.28),
                 int(rng.choice([3, 4, 5])), _hsv_colour(rng, nz))
    masks = [_shape_mask(p, i, S) for i in range(pre + T)] if nz == 0 else None  # no pan: each mask once
    # with probability `context` the action's usual scene (fainter than in the stills), otherwise a neutral one
    scene = _context(label, rng, S, rng.uniform(*VIDEO_CONTEXT)) if context > 0 and rng.random() < context else None
    seen = _scene_frames(rng, T) if scene is not None else None  # (T,) how much of the scene each frame shows
    video = np.zeros((T, S, S, 3), np.float32)
    for i in range(T):
        if nz > 0:
            ox, oy = int(round(pad + pan[i, 0])), int(round(pad + pan[i, 1]))
            ox, oy = np.clip(ox, 0, 2 * pad), np.clip(oy, 0, 2 * pad)
            frame = background[oy:oy + S, ox:ox + S].copy()
            shift = (ox - pad, oy - pad)
            if has_distractor:
                dx, dy, dr, da, ds, dc = d_par
                mk = _polygon_mask(dx - shift[0], dy - shift[1], dr, da, ds, 1.0, S)[..., None]
                frame = frame * (1 - mk) + mk * dc
        else:
            frame, shift = np.zeros((S, S, 3), np.float32), (0, 0)
        if scene is not None:
            frame = frame + seen[i] * scene
        mk = _trail_mask(p, pre + i, S, trail, step, shift, masks)[..., None]
        video[i] = frame * (1 - mk) + mk * colour
    video = _camera(video, rng, clutter, noise)
    return (video.clip(0, 1) * 255 + 0.5).astype(np.uint8)


CONTEXT_HEIGHT = 0.25  # the scene's ground: the bottom quarter of the frame
VIDEO_CONTEXT = (0.15, 0.4)  # the ground's strength in a video that shows it (the stills': STILL_CONTEXT)
SCENE_SHARE = (0.3, 0.6)  # the part of a video during which the scene is in view


def _scene_frames(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames,) in [0, 1]: the scene is in view during U(SCENE_SHARE) of the video, fading in and out, as when the
    camera tilts down to the floor and back up; the stretch may run past the end into the start, so every frame is
    as likely to show it as any other."""
    length, start = rng.uniform(*SCENE_SHARE) * frames, rng.uniform(0, frames)
    t = (np.arange(frames) + 0.5 - start) % frames  # time since the stretch began, around the loop
    return np.clip(np.minimum(t, length - t) / max(1.0, 0.05 * frames) + 0.5, 0, 1).astype(np.float32)


def _context(label: int, rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """The scene an action is usually filmed in, float (size, size, 3): a textured ground in the class's hue (k/8)
    along the bottom: what lets an image model name an action from a frame (a pool for swimming), not the motion."""
    hue = label / len(SYNTHETIC_CLASSES)
    rgb = np.array([abs(hue * 6 - 3) - 1, 2 - abs(hue * 6 - 2), 2 - abs(hue * 6 - 4)]).clip(0, 1)
    texture = 0.5 + 0.5 * _smooth_texture(rng, size, size)  # (size, size) in [0.5, 1]
    ground = (np.arange(size) >= round((1 - CONTEXT_HEIGHT) * size)).astype(np.float32)[:, None, None]  # (size, 1, 1)
    return (strength * ground * texture[..., None] * rgb).astype(np.float32)


def _camera(frames: np.ndarray, rng: np.random.Generator, clutter: float, noise: float) -> np.ndarray:
    """What a camera adds, float (N, H, W, 3): a static grey texture of strength U(0, clutter) (a cluttered room, never
    a scene's hue) and sensor noise of std U(0, noise), per video; a knob at 0 draws nothing (old videos unchanged)."""
    if clutter > 0:
        level, (H, W) = rng.uniform(0, clutter), frames.shape[1:3]
        bg = np.repeat(level * _smooth_texture(rng, H, W)[..., None], 3, axis=-1).astype(np.float32)  # (H, W, 3)
        shape = frames.max(axis=-1, keepdims=True)  # (N, H, W, 1): where the shape and its trail are drawn
        frames = frames + bg * (1 - shape.clip(0, 1))  # behind them: a ghost lets the background show through
    if noise > 0:
        frames = frames + rng.normal(0, rng.uniform(0, noise), frames.shape).astype(np.float32)
    return frames


def write_video(path, frames: np.ndarray, fps=16, codec="libx264", options=None, container_options=None):
    """uint8 (T, H, W, 3) -> an encoded file (H.264 mp4 by default; tests also write mpeg4 .avi and vp9 .webm).
    `options` go to the encoder (e.g. {"g": "16"}), `container_options` to the muxer (e.g. {"movflags": "faststart"})."""
    T, H, W, _ = frames.shape
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if options:
            s.options = options
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_synthetic_one(job):
    path, label, seed, w = job
    rng = np.random.default_rng(seed)
    write_video(path, render_synthetic_video(label, rng, w.video_size, w.video_frames, w.nuisance, w.trail, w.context,
                                             w.clutter, w.noise), w.fps,
                options={"crf": "18", "threads": "1", "preset": "veryfast"})


def make_synthetic(out, world: SyntheticWorld = SyntheticWorld(), workers=None, progress=True):
    """Write the synthetic dataset: out/{train,test}/<class>/<class>_NNNN.mp4, train.txt / test.txt
    (`<relative path> <label>`), classes.txt. Deterministic in the world's seed (each video has its own seed)."""
    import multiprocessing as mp
    out = Path(out)
    jobs, lists = [], {"train": [], "test": []}
    for split, n, sid in (("train", world.train_per_class, 0), ("test", world.test_per_class, 1)):
        for c, name in enumerate(SYNTHETIC_CLASSES):
            (out / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/{name}/{name}_{i:04d}.mp4"
                vseed = int(np.random.SeedSequence([world.world_seed, sid, c, i]).generate_state(1)[0])
                jobs.append((str(out / rel), c, vseed, world))
                lists[split].append(f"{rel} {c}")
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(_write_synthetic_one, jobs, chunksize=8), total=len(jobs),
                      desc=f"synthetic videos -> {out}", disable=not progress, unit="video"):
            pass
    for split in lists:
        (out / f"{split}.txt").write_text("\n".join(lists[split]) + "\n")
    (out / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("NANOVIDEOSSL_CACHE", Path.home() / ".cache" / "nanovideossl"))


def synthetic_tag(w: SyntheticWorld) -> str:
    """The cache folder's name: every knob, so changing one never reuses stale videos. A knob at 0 adds nothing,
    so the folders (and videos) of before each knob existed keep their names."""
    tag = (f"synthetic-v1-s{w.video_size}-f{w.video_frames}-fps{w.fps}-n{w.nuisance:g}-{w.train_per_class}x"
           f"{w.test_per_class}-seed{w.world_seed}")
    for name in ("trail", "context", "clutter", "noise"):
        tag += f"-{name}{getattr(w, name):g}" if getattr(w, name) else ""
    return tag


def ensure_synthetic(root=None, world: SyntheticWorld = SyntheticWorld()) -> str:
    """The synthetic dataset's folder, generated once (by default in the cache, named by synthetic_tag) into a
    temporary folder renamed into place: concurrent processes (torchrun ranks) never see a half-written one."""
    root = Path(root) if root is not None else cache_dir() / synthetic_tag(world)
    if (root / "classes.txt").exists():
        return str(root)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):  # someone's file or folder: never touch it
        raise DatasetError(f"{root} is {'a file' if not root.is_dir() else 'a folder with no classes.txt'}, not a "
                           f"synthetic dataset: nothing is generated there. For your own videos, drop --dataset "
                           f"synthetic (and pass their folder); for the synthetic set, pass a new or empty folder")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp", dir=root.parent))
        print(f"generating the synthetic dataset once into {root} ...", file=sys.stderr)
        try:
            make_synthetic(tmp, world)
        except BaseException:  # an error or Ctrl-C half-way: leave no half-written folder behind in the cache
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:  # a read-only or full cache
        raise DatasetError(f"cannot write the synthetic videos into {root.parent} ({e.strerror or e}): point "
                           f"NANOVIDEOSSL_CACHE (or --data) at a writable folder with ~100 MB free") from e
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first (same seed, same content)
        shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


# ----------------------------------------------------------------------------------------------------------------------
# 4. clip samplers: (num_frames, fps, rng) -> list of index arrays
# ----------------------------------------------------------------------------------------------------------------------
# A clip is `frames` frames `stride` apart; with `target_fps`, the stride counts frames of a `target_fps` video (the
# same seconds whatever the source's rate: Kinetics mixes 25 and 30 fps). A clip past the end of the video repeats the
# last frame (clip_indices clamps, as SVT does); cvrl.py's pair sampler loops the video, as CVRL's official code.

def clip_indices(start: int, frames: int, stride: int, num_frames: int, fps: float = 1.0, target_fps=None):
    """Frame indices of the clip starting at virtual frame `start`."""
    v = start + stride * np.arange(frames)
    if target_fps:
        v = np.floor(v * fps / target_fps + 1e-6).astype(np.int64)
    # A clip longer than the video repeats its last frame (SVT's temporal_sampling clamps too): frames stay in order.
    return np.minimum(v, num_frames - 1)


def _virtual_frames(num_frames, fps, target_fps):
    return max(1, int(num_frames * target_fps / fps)) if target_fps else num_frames


@dataclass
class RandomClip:
    """One clip with a uniformly random start among the starts where it fits (training, linear-probe training)."""
    frames: int
    stride: int
    target_fps: float | None = None

    def __call__(self, num_frames, fps, rng):
        L = _virtual_frames(num_frames, fps, self.target_fps)
        span = (self.frames - 1) * self.stride
        M = L - span if L > span else L
        start = int(rng.integers(M))
        return [clip_indices(start, self.frames, self.stride, num_frames, fps, self.target_fps)]


@dataclass
class UniformClips:
    """K clips with starts evenly spaced over [0, L - span], both ends included (evaluation: '10 clips x 3 crops')."""
    frames: int
    stride: int
    num_clips: int
    target_fps: float | None = None

    def __call__(self, num_frames, fps, rng=None):
        L = _virtual_frames(num_frames, fps, self.target_fps)
        span = (self.frames - 1) * self.stride
        starts = np.linspace(0, max(L - 1 - span, 0), self.num_clips).round().astype(int)
        return [clip_indices(s, self.frames, self.stride, num_frames, fps, self.target_fps) for s in starts]


# ----------------------------------------------------------------------------------------------------------------------
# 5. dataset, epoch sampler, loader
# ----------------------------------------------------------------------------------------------------------------------

class VideoDataset(torch.utils.data.Dataset):
    """Item = the clips `sampler` picks from one video, decoded to a `canvas` (H, W). Keys are `(index, seed)` pairs
    (EpochSampler): each item has its own generator, so its clips depend on neither the worker nor an interruption.
    An unreadable video is replaced by another (resample=True: training; `retries` times, then an error) or comes
    back with ok=False (evaluation); its path travels with the batch ("bad"), as workers cannot report it."""

    def __init__(self, videos: VideoList, sampler, canvas=(64, 64), resample=True, min_frames=1, retries=10):
        self.videos, self.sampler, self.canvas = videos, sampler, tuple(canvas)
        self.resample, self.min_frames, self.retries = resample, min_frames, retries

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([seed, index])
        bad = []
        for _ in range(self.retries + 1):
            path = self.videos.paths[index]
            try:
                frames, lengths, _ = _read_clip_frames(path, self.sampler, rng, self.canvas, self.min_frames)
            except VideoError as e:
                bad.append(f"{e.path}: {e.reason}")
            except Exception as e:  # noqa: BLE001 -- anything else from deep inside FFmpeg must not kill a long run
                bad.append(f"{path}: {type(e).__name__}: {e}")
            else:
                video = torch.from_numpy(frames)  # (K * T, H, W, 3): the clips one after another
                video = video.unflatten(0, (len(lengths), lengths[0])) if len(set(lengths)) == 1 \
                    else torch.stack(video.split(lengths))  # (K, T, H, W, 3); unequal lengths fail here, loudly
                return {"video": video, "label": self.videos.labels[index], "index": index,
                        "bad": bad, "ok": True}  # video: (K, T, H, W, 3) uint8
            if not self.resample:
                return {"video": None, "label": self.videos.labels[index], "index": index, "bad": bad, "ok": False}
            index = int(rng.integers(len(self.videos)))
        raise RuntimeError(f"{self.retries + 1} videos in a row could not be decoded; is the dataset broken? "
                           f"Errors:\n  " + "\n  ".join(bad) + "\nRun `python scripts/dataset.py check ...` to scan it.")


def collate(items):
    """Stack the decodable items; keep the paths that failed and the indices of items that were dropped."""
    ok = [it for it in items if it["ok"]]
    return {
        "video": torch.stack([it["video"] for it in ok]) if ok else torch.empty(0, dtype=torch.uint8),  # (B, K, T, H, W, 3)
        "label": torch.tensor([it["label"] for it in ok], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in ok], dtype=torch.long),
        "bad": [b for it in items for b in it["bad"]],
        "failed": [it["index"] for it in items if not it["ok"]],
    }


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(index, seed)` keys: a permutation that depends only on (seed, epoch), sharded across `world_size`
    ranks (with drop_last cut to a multiple of it: every rank takes the same steps). set_epoch(e) before each epoch."""

    def __init__(self, n, shuffle=True, seed=0, rank=0, world_size=1, drop_last=True):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.drop_last, self.epoch = drop_last, 0
        self.skip = 0  # items of this rank's shard to skip at the start of the epoch (a mid-epoch resume)

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def _order(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.drop_last:
            order = order[: self.n - self.n % self.world]
        return order[self.rank::self.world][self.skip:]

    def __len__(self):
        return len(self._order())

    def __iter__(self):
        for i in self._order():
            yield int(i), int(np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)[0])


def _worker_init(worker_id):
    # Each worker decodes one video at a time with one FFmpeg thread; torch ops in workers stay single-threaded
    # too, or N workers x M threads oversubscribe the cores. Seeds for incidental randomness differ per worker.
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    # A process group of its own: torchrun's agent stops a training process by signalling its whole group, and so
    # does Ctrl-C in a terminal. A worker that took that SIGTERM would die at once, and the training process would die
    # of the lost worker (a RuntimeError at any point) instead of saving its checkpoint. The training process stops
    # its workers itself when it ends; a worker whose training process is killed notices and exits (torch's watchdog).
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)


def make_loader(dataset, batch_size, workers=2, shuffle=True, drop_last=True, seed=0, rank=0, world_size=1,
                pin_memory=None):
    """DataLoader over (index, seed) keys: persistent workers, pinned memory with a GPU, the epoch's order from
    `loader.sampler.set_epoch(e)`. A training loader that cannot fill one batch exits with a message."""
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world_size, drop_last)
    if drop_last and len(dataset) < batch_size * world_size:  # a training loader that would yield no step at all
        raise SystemExit(f"error: {len(dataset)} training videos cannot fill one batch of {batch_size} x {world_size} "
                         f"processes; lower --batch-size")
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, drop_last=drop_last,
        persistent_workers=workers > 0, worker_init_fn=_worker_init, prefetch_factor=4 if workers > 0 else None)


# ----------------------------------------------------------------------------------------------------------------------
# 6. batched augmentation on the device
# ----------------------------------------------------------------------------------------------------------------------
# Parameters are drawn on the CPU from a torch.Generator (the same whatever the device) for G "groups", shared by the
# F frames of a group: a clip (G = B, F = T: temporally consistent) or a frame (G = B*T, F = 1: CVRL's ablation).
# On a GPU every transform is one batched op over all groups; on the CPU the same maths runs group by group (a
# group stays in the cache, and a group that drew "no jitter" costs nothing), with the crop as two 1-D passes
# (_crop_resize_cpu), as roi_align on a CPU cost more than everything else together.

@dataclass
class AugmentConfig:
    area: tuple = (0.3, 1.0)       # random resized crop: fraction of the frame area (CVRL: 0.3-1)
    aspect: tuple = (0.5, 2.0)     # random resized crop: w/h range, sampled log-uniformly (CVRL: 0.5-2)
    flip_p: float = 0.5            # horizontal flip probability
    jitter: tuple = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue strengths (SimCLR strength 1)
    jitter_p: float = 0.8          # probability of applying colour jitter (ops in random order per clip)
    gray_p: float = 0.2            # probability of converting to grayscale
    blur_p: float = 0.0            # probability of Gaussian blur, sigma ~ U(blur_sigma)
    blur_sigma: tuple = (0.1, 2.0)
    solarize_p: float = 0.0        # probability of solarize (x >= 0.5 -> 1 - x)
    per_frame: bool = False        # draw parameters per frame instead of per clip (temporally inconsistent ablation)


def sample_crop_boxes(n, H, W, area, aspect, generator=None, attempts=10):
    """torchvision's RandomResizedCrop boxes for n crops: area uniform in `area`, log(aspect) uniform, the first of
    `attempts` that fits, else a centre crop with the aspect clamped. Float (n, 4) boxes (x1, y1, x2, y2), pixels."""
    s = torch.empty(n, attempts).uniform_(*area, generator=generator) * H * W
    logr = torch.empty(n, attempts).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=generator)
    w, h = torch.sqrt(s * logr.exp()), torch.sqrt(s / logr.exp())
    fits = (w <= W) & (h <= H)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    ar = W / H
    fw, fh = (W, W / aspect[0]) if ar < aspect[0] else (H * aspect[1], H) if ar > aspect[1] else (W, H)
    sel = first.clamp(min=0)
    cw = torch.where(first >= 0, w.gather(1, sel[:, None])[:, 0], torch.full((n,), float(fw)))
    ch = torch.where(first >= 0, h.gather(1, sel[:, None])[:, 0], torch.full((n,), float(fh)))
    x1 = torch.rand(n, generator=generator) * (W - cw)
    y1 = torch.rand(n, generator=generator) * (H - ch)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)


def _draw(G, H, W, cfg: AugmentConfig, generator) -> dict:
    """Every random parameter of augment() for G groups, on the CPU, always in this order and for every group (so the
    stream depends on neither the data nor the device). Booleans say which groups apply a transform."""
    p = dict(boxes=sample_crop_boxes(G, H, W, cfg.area, cfg.aspect, generator),     # (G, 4)
             flip=torch.rand(G, generator=generator) < cfg.flip_p)
    if cfg.jitter_p > 0 and any(cfg.jitter):
        bs, cs, ss, hs = cfg.jitter
        p["jitter"] = torch.rand(G, generator=generator) < cfg.jitter_p
        p["factors"] = torch.stack([torch.empty(G).uniform_(max(0, 1 - bs), 1 + bs, generator=generator),
                                    torch.empty(G).uniform_(max(0, 1 - cs), 1 + cs, generator=generator),
                                    torch.empty(G).uniform_(max(0, 1 - ss), 1 + ss, generator=generator),
                                    torch.empty(G).uniform_(-hs, hs, generator=generator)], 1)      # (G, 4)
        p["order"] = torch.rand(G, 4, generator=generator).argsort(1)                # (G, 4): op at each position
    if cfg.gray_p > 0:
        p["gray"] = torch.rand(G, generator=generator) < cfg.gray_p
    if cfg.blur_p > 0:
        p["blur"] = torch.rand(G, generator=generator) < cfg.blur_p
        p["sigma"] = torch.empty(G).uniform_(*cfg.blur_sigma, generator=generator)
    if cfg.solarize_p > 0:
        p["solarize"] = torch.rand(G, generator=generator) < cfg.solarize_p
    return p


# The crop on the CPU. roi_align(sampling_ratio=-1, aligned=True) makes output pixel (i, j) the mean of a gy x gx
# grid of bilinear samples (anti-aliasing when shrinking); those weights factor into rows and columns, so the crop +
# resize is out = Wy @ frame @ Wx^T: _crop_resize_cpu applies it as two 1-D passes over the cropped pixels only,
# the same sums as roi_align in another order (equal to ~1e-6), so CPU and GPU results agree.

def _roi_axis_weights(a: float, b: float, size: int, n: int):
    """roi_align's weights along one axis for the box edges a < b on an axis of n pixels: indices and weights, each
    (size, 2 * grid), of the input pixels that output pixel i averages. Float32 arithmetic in the kernel's order."""
    start = torch.tensor(a, dtype=torch.float32) - 0.5                       # aligned=True: pixel centres at +0.5
    length = (torch.tensor(b, dtype=torch.float32) - 0.5) - start
    bin_size = length / size
    grid = max(int(torch.ceil(length / size)), 1)
    i = torch.arange(size, dtype=torch.float32)[:, None]
    k = torch.arange(grid, dtype=torch.float32)[None]
    pos = start + i * bin_size + (k + 0.5) * bin_size / grid                 # (size, grid) sample positions
    inside = ((pos >= -1) & (pos <= n)).float()                              # the kernel's "outside -> 0" rule
    pos = pos.clamp(min=0)
    low = pos.long()
    last = low >= n - 1                                                      # at the last pixel: no neighbour
    low = low.clamp(max=n - 1)
    frac = torch.where(last, torch.zeros_like(pos), pos - low)
    idx = torch.cat([low, torch.where(last, low, low + 1)], 1)
    w = torch.cat([(1 - frac) * inside, frac * inside], 1) / grid
    return idx, w


def _crop_resize_cpu(frames: torch.Tensor, box, size: int, flip: bool) -> torch.Tensor:
    """roi_align's crop + resize of one group, scaled to [0, 1]: uint8 frames (F, C, H, W), box (4,) -> float (size, F,
    C, size). `flip` mirrors it for free (the column weights taken in reverse order)."""
    Fr, C, H, W = frames.shape
    x1, y1, x2, y2 = box.tolist()
    iy, wy = _roi_axis_weights(y1, y2, size, H)                              # (size, 2 gy)
    ix, wx = _roi_axis_weights(x1, x2, size, W)                              # (size, 2 gx)
    if flip:
        ix, wx = ix.flip(0), wx.flip(0)
    r0, r1, c0, c1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    # Only the pixels the box reads are converted to float, rows first: (h, F, C, w).
    rows = torch.empty(r1 - r0, Fr, C, c1 - c0).copy_(frames[:, :, r0:r1, c0:c1].permute(2, 0, 1, 3))
    # Rows: each output row is a weighted sum of a few input rows, which is what embedding_bag computes (a "bag" of
    # row indices with per-index weights), on whole rows of F*C*w values at a time.
    x = F.embedding_bag(iy - r0, rows.view(r1 - r0, -1), per_sample_weights=wy / 255.0, mode="sum")
    x = x.view(size * Fr * C, c1 - c0)                                       # (size*F*C, w)
    # Columns: a matrix product with Wx^T (w, size). Wx is banded (output column j reads input columns near
    # j * w / size), so it is cut into column blocks and each block multiplies only the input columns it reads.
    wx_dense = torch.zeros(size, c1 - c0).scatter_add_(1, ix - c0, wx)       # (size, w)
    out = torch.empty(size * Fr * C, size)
    blocks = max(1, size // 28)
    for j in range(blocks):
        q0, q1 = j * size // blocks, (j + 1) * size // blocks
        lo, hi = int(ix[q0:q1].min()) - c0, int(ix[q0:q1].max()) + 1 - c0
        torch.mm(x[:, lo:hi], wx_dense[q0:q1, lo:hi].t(), out=out[:, q0:q1])
    return out.view(size, Fr, C, size)


def _gray(x):  # (..., 3, H, W) -> (..., 1, H, W), ITU-R 601 luma as in torchvision
    return (0.299 * x[..., 0:1, :, :]).add_(x[..., 1:2, :, :], alpha=0.587).add_(x[..., 2:3, :, :], alpha=0.114)


def _hue(x, f, out):
    """Rotate the hue of x (G, F, 3, h, w) by f (G,) turns into `out` (may be x), as torchvision's RGB -> HSV -> RGB
    round trip without building HSV: max and min stay, the hue (in sixths) is shifted, and each channel is min +
    (max - min) * a triangle wave of it; float-mask lerps and h - 6 floor(h / 6) (torch.where is slower on CPUs)."""
    r, g, b = x.unbind(-3)
    mx, mn = torch.maximum(r, g), torch.minimum(r, g)                       # each (G, F, h, w)
    mx, mn = torch.maximum(mx, b, out=mx), torch.minimum(mn, b, out=mn)
    d = mx - mn
    inv = d.clamp(min=1e-8).reciprocal_()       # grays (d = 0) get some hue; d * anything = 0 keeps them gray
    # the hue on the sector of the largest channel, red winning ties, then green (torchvision); two scratch tensors
    end, mask = torch.empty_like(d), torch.empty_like(d)
    h = (r - g).mul_(inv).add_(4.0)                                                              # blue largest
    h.lerp_(torch.sub(b, r, out=end).mul_(inv).add_(2.0), torch.eq(mx, g, out=mask))            # green largest
    h.lerp_(torch.sub(g, b, out=end).mul_(inv), torch.eq(mx, r, out=mask))                      # red largest
    h.add_(6.0 * f.view(-1, 1, 1, 1))
    h.sub_(torch.div(h, 6.0, out=end).floor_().mul_(6.0))                    # back into [0, 6)
    for c, centre, flip in ((0, 3.0, False), (1, 2.0, True), (2, 4.0, True)):  # red, green, blue
        wave = torch.sub(h, centre, out=end).abs_()
        wave = wave.sub_(1.0) if not flip else wave.neg_().add_(2.0)         # |h-3|-1 for red, 2-|h-c| for the others
        torch.addcmul(mn, d, wave.clamp_(0.0, 1.0), out=out[:, :, c])
    return out


def _jitter_op(op, x, f, out=None):
    """One colour op on x (G, F, 3, h, w) in [0, 1] with per-group factor f (G,), into `out` (None: a new tensor).
    Brightness, contrast, saturation: x * f + other * (1 - f), other = black, the clip's mean gray, the gray image."""
    out = torch.empty_like(x) if out is None else out
    if op == 3:    # hue: rotate the hue circle by f (in turns)
        return _hue(x, f, out)
    f = f.view(-1, 1, 1, 1, 1)
    if op == 0:    # brightness: scale
        torch.mul(x, f, out=out)
    elif op == 1:  # contrast: blend with the clip's mean gray level (over all its frames: temporally consistent);
        # the mean of the gray image is the gray of the channel means, which needs no gray image
        m = x.mean(dim=(1, 3, 4))                                                                  # (G, C)
        mean = 0.299 * m[:, 0] + 0.587 * m[:, 1] + 0.114 * m[:, 2]                                 # (G,)
        torch.mul(x, f, out=out).add_(mean.view(-1, 1, 1, 1, 1) * (1 - f))
    else:          # saturation: blend with the grayscale image
        gray = _gray(x).mul_(1 - f)
        torch.mul(x, f, out=out).add_(gray)
    return out.clamp_(0, 1)


def _blur(x, sigma, radius, out=None):
    """Separable Gaussian blur with a per-group sigma: x (G, F, C, h, w), sigma (G,). One grouped conv per axis."""
    G, Fr, C, h, w = x.shape
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kern = torch.exp(-k[None] ** 2 / (2 * sigma[:, None] ** 2))
    kern = kern / kern.sum(1, keepdim=True)                                   # (G, 2r+1)
    kern = kern.repeat_interleave(Fr * C, 0)                                  # (G*F*C, 2r+1)
    y = rearrange(x, "g f c h w -> 1 (g f c) h w")
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kern[:, None, None, :], groups=G * Fr * C)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kern[:, None, :, None], groups=G * Fr * C)
    y = rearrange(y, "1 (g f c) h w -> g f c h w", g=G, f=Fr)
    return y if out is None else out.copy_(y)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor of draws or indices on `device`. On a GPU a plain .to() from ordinary (pageable) memory waits
    until the device has finished all the work queued before it, a host sync each time; copied from pinned memory
    with non_blocking it joins the queue instead, and the host goes on launching the next ops."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _on_groups(x, chosen, fn, *args):
    """x[chosen] = fn(x[chosen], *(a[chosen] for a in args)), `chosen` a CPU bool (G,): only the chosen groups are
    computed; when all are (always, on the CPU path's one-group blocks), fn writes into x directly (out=x)."""
    sel = torch.nonzero(chosen).flatten()
    if len(sel) == len(x):
        fn(x, *args, out=x)
    elif len(sel):
        sel = _to_device(sel, x.device)
        x[sel] = fn(x[sel], *(a[sel] for a in args))


def _grayscale(x, out=None):  # every channel := the gray image
    y = _gray(x).expand_as(x)
    return y if out is None else out.copy_(y)


def _solarize(x, out=None):
    return torch.where(x >= 0.5, 1.0 - x, x, out=out)


def _photometric(x, p: dict, cfg: AugmentConfig, size: int):
    """Colour jitter, grayscale, blur and solarize, in place on x (G, F, C, s, s) in [0, 1], with the draws p of
    these G groups (bools on the CPU, factors on x's device)."""
    if "jitter" in p:
        # Random order: for each of the 4 positions, each op is applied to the groups that drew it at that position.
        # Groups that skip jitter (prob 1 - jitter_p) are never chosen.
        for pos in range(4):
            for op in range(4):
                if cfg.jitter[op] != 0:
                    chosen = p["jitter"] & (p["order"][:, pos] == op)
                    _on_groups(x, chosen, functools.partial(_jitter_op, op), p["factors"][:, op])
    if "gray" in p:
        _on_groups(x, p["gray"], _grayscale)
    if "blur" in p:
        radius = max(1, (size // 10) // 2)  # CVRL: kernel size = size // 10 (22 at 224 -> 23 taps)
        _on_groups(x, p["blur"], functools.partial(_blur, radius=radius), p["sigma"])
    if "solarize" in p:
        _on_groups(x, p["solarize"], _solarize)


def augment(video: torch.Tensor, size: int, cfg: AugmentConfig = AugmentConfig(), generator=None) -> torch.Tensor:
    """uint8 (B, C, T, H, W) on any device -> float (B, C, T, size, size) in [0, 1], augmented per cfg, in CVRL's
    official order: random resized crop -> flip -> colour jitter (p, random order) -> grayscale (p) -> blur (p) ->
    solarize (p); no mean/std normalisation (normalize()). The crop is roi_align's (anti-aliased) on every device."""
    B, C, T, H, W = video.shape
    dev = video.device
    G, Fr = (B * T, 1) if cfg.per_frame else (B, T)
    p = _draw(G, H, W, cfg, generator)
    if dev.type == "cpu":
        out = torch.empty(B, C, T, size, size)
        frames, x = video.transpose(1, 2), out.transpose(1, 2)               # (B, T, C, H, W), (B, T, C, s, s) views
        for g in range(G):
            b, t = divmod(g * Fr, T)                                         # group g = frames t..t+F-1 of clip b
            xg = x[b, t:t + Fr]                                              # (F, C, s, s), a view of out
            xg.copy_(_crop_resize_cpu(frames[b, t:t + Fr], p["boxes"][g], size, bool(p["flip"][g])).permute(1, 2, 0, 3))
            _photometric(xg[None], {k: v[g:g + 1] for k, v in p.items()}, cfg, size)
        return out
    # Crop + resize: one roi_align over all B*T frames, each frame with its group's box. sampling_ratio=-1 averages
    # ceil(box/out) samples per output pixel, so downscaling is anti-aliased; aligned=True makes a full-frame box
    # reproduce the frame exactly.
    boxes = p["boxes"].repeat_interleave(Fr, 0)                                                   # (B*T, 4)
    rois = _to_device(torch.cat([torch.arange(B * T, dtype=torch.float)[:, None], boxes], 1), dev)
    frames = rearrange(video, "b c t h w -> (b t) c h w").float()                                 # (B*T, C, H, W)
    x = roi_align(frames, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True) / 255.0
    x = rearrange(x, "(g f) c h w -> g f c h w", g=G)                                             # (G, F, C, s, s)
    flip = _to_device(torch.nonzero(p["flip"]).flatten(), dev)  # nonzero of a CPU tensor: no wait for the GPU
    if len(flip):
        x[flip] = x[flip].flip(-1)
    _photometric(x, {k: _to_device(v, dev) if k in ("factors", "sigma") else v for k, v in p.items()}, cfg, size)
    return rearrange(x, "g f c h w -> (g f) c h w").view(B, T, C, size, size).permute(0, 2, 1, 3, 4).contiguous()


def spatial_crops(video: torch.Tensor, size: int, num_crops: int = 3) -> torch.Tensor:
    """Evaluation views: the short side scaled to `size`, `num_crops` square crops along the long side (1: centre; 3:
    start/centre/end, CVRL's '3 crops'). uint8 (B, C, T, H, W) -> float (B * num_crops, C, T, size, size), [0, 1]."""
    B, C, T, H, W = video.shape
    side = min(H, W)
    offs = [(max(H, W) - side) / 2] if num_crops == 1 else np.linspace(0, max(H, W) - side, num_crops).tolist()
    boxes = torch.tensor([[o, 0, o + side, side] if W >= H else [0, o, side, o + side] for o in offs], dtype=torch.float)
    frames = rearrange(video, "b c t h w -> (b t) c h w").float()                                     # (B*T, C, H, W)
    idx = torch.arange(B * T, dtype=torch.float).repeat_interleave(num_crops)
    rois = torch.cat([idx[:, None], boxes.repeat(B * T, 1)], 1).to(video.device)
    x = roi_align(frames, rois, (size, size), 1.0, -1, True) / 255.0                              # (B*T*n, C, s, s)
    return rearrange(x, "(b t n) c h w -> (b n) c t h w", b=B, t=T, n=num_crops)


def normalize(x: torch.Tensor, mean, std, channel_dim=1) -> torch.Tensor:
    """(x - mean) / std along `channel_dim` (1 for (B, C, T, H, W), 2 for (B, T, C, H, W))."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)


def to_bcthw(video: torch.Tensor) -> torch.Tensor:
    """A collated batch (B, T, H, W, 3) -> (B, C, T, H, W), as a view (no copy on the CPU)."""
    return video.permute(0, 4, 1, 2, 3)
