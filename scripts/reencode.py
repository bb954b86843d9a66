"""
Re-encode a dataset for fast random access: the same relative paths and file names under another root, H.264 tuned
for fast decoding (x264 tune fastdecode: no CABAC, no deblocking), a keyframe every 16 frames, short side 256.
Training decodes random 16-frame clips: from a camera's files (long GOPs, full size) that costs many frames per clip;
after this, a few. scripts/bench.py section 4 measured the formats (BENCHMARKS.md).

    python scripts/reencode.py --src UCF-101 --dst UCF-101-256          # resumable: run it again to finish
    python scripts/reencode.py --src ~/videos --dst ~/videos256 --workers 8
    python scripts/reencode.py --src ~/videos --dst ~/videos256 --codec mpeg4 --qscale 4   # more clips/s, more disk
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import training  # noqa: E402

# Re-encoding a dataset for fast random access. Seeking lands on the keyframe before the wanted frame and decodes
# forward from there, so a random clip costs about GOP/2 extra decoded frames: ~140 frames per 16-frame clip with
# x264's default keyframe interval of 250 (Kinetics as downloaded) against ~40 with a keyframe every 16 frames
# (mmaction2's "dense" encoding), 2.5-3x more clips/s per CPU core (docs/perf.md §4, BENCHMARKS.md).
# Scaling the short side to 256 (the usual training input before 224 crops) cuts decode cost further for HD sources.
#
# What each decoded frame costs depends on the codec's tools, not only on how many frames are decoded. The default is
# H.264 with x264's `tune=fastdecode`: no CABAC (the arithmetic entropy decoder, the serial part of H.264 decoding,
# replaced by CAVLC), no in-loop deblocking filter and no weighted prediction. The files grow a little (CABAC
# compresses better) and the picture is a little blockier at the same CRF, and decoding gets much cheaper per frame:
# scripts/bench.py's "re-encode formats" section measures the trade-off against the other variants this function can
# write (keyframe interval, all-intra, MPEG-4 Part 2, MJPEG); its table in BENCHMARKS.md has the numbers.
# All-intra formats (gop=1, MJPEG) make every seek land on the wanted frame, but read_frames still decodes the
# frames in between the wanted ones of a strided clip, and intra frames are the largest and slowest to decode: they
# cost far more disk for no gain in clips/s over a keyframe every 16 frames. MPEG-4 Part 2 (--codec mpeg4) is the
# other way to go: its decoder is simpler still, so it decodes more clips per core, at a larger file and a lower
# PSNR than H.264 at CRF 23 -- the option to take when the cores, not the disk, are short.

# Output container per file-name extension. The file NAME never changes (split files and Kinetics CSVs refer to
# names), so the container follows the name where it can hold the codec; where it cannot (WebM allows only
# VP8/VP9/AV1, Ogg no H.264, MPEG-PS/ASF only badly, FLV and 3GP no MJPEG) the file is written as Matroska under its
# old name. FFmpeg, and so PyAV and read_frames, detects the container from the content, not from the name.
REENCODE_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".flv": "flv",
                    ".3gp": "3gp"}
# The codecs reencode_video writes: name -> (PyAV encoder, pixel format, containers that hold it). MJPEG is
# full-range YUV (yuvj420p), the JPEG convention; read_frames converts either range to the same RGB.
REENCODE_CODECS = {
    "h264": ("libx264", "yuv420p", {"mp4", "mov", "matroska", "avi", "flv", "3gp"}),
    "mpeg4": ("mpeg4", "yuv420p", {"mp4", "mov", "matroska", "avi", "3gp"}),   # MPEG-4 Part 2 (the XviD/DivX codec)
    "mjpeg": ("mjpeg", "yuvj420p", {"mp4", "mov", "matroska", "avi"}),          # every frame a JPEG: all-intra
}
REENCODE_COPY = (".txt", ".csv", ".json")  # split files and annotations next to the videos are copied as they are


def _reencode_size(w, h, short_side):
    """(w, h) scaled so the short side is `short_side` (None/0: unchanged), both rounded to even numbers
    (yuv420p subsamples chroma by 2)."""
    s = short_side / min(w, h) if short_side else 1.0
    even = lambda v: max(2, int(round(v * s / 2)) * 2)  # noqa: E731
    return even(w), even(h)


def _encoder_settings(codec, fmt, gop, crf, preset, tune, qscale) -> tuple[str, str, dict]:
    """(PyAV encoder name, pixel format, encoder options) for reencode_video. One thread per encoder: reencode_dataset
    runs one process per core."""
    if codec not in REENCODE_CODECS:
        raise ValueError(f"unknown codec {codec!r}: choose one of {', '.join(REENCODE_CODECS)}")
    encoder, pix_fmt, _ = REENCODE_CODECS[codec]
    opts = {"threads": "1"}
    if codec == "h264":
        opts.update(crf=str(crf), g=str(gop), preset=preset)
        if tune and tune != "none":
            opts["tune"] = tune
        if fmt == "avi":
            opts["bf"] = "0"  # AVI stores no presentation times: B-frames would need guessing
    else:
        # A constant quantizer (2 = best .. 31 = worst): FFmpeg's `-q:v` sets it per frame, which PyAV cannot, so
        # rate control is pinned to it by qmin = qmax instead. MJPEG has no inter frames; `gop` is MPEG-4's keyint.
        opts.update(qmin=str(qscale), qmax=str(qscale))
        if codec == "mpeg4":
            opts["g"] = str(gop)
    return encoder, pix_fmt, opts


def check_reencode_settings(codec="h264", gop=16, crf=23, preset="medium", tune="fastdecode", qscale=4):
    """Encode two tiny frames in memory with these settings, so a misspelt --preset or --tune fails once, up front,
    instead of once per video inside the workers. Raises ValueError."""
    import io
    encoder, pix_fmt, opts = _encoder_settings(codec, "matroska", gop, crf, preset, tune, qscale)
    try:
        with av.open(io.BytesIO(), "w", format="matroska") as out:
            s = out.add_stream(encoder, rate=25)
            s.width, s.height, s.pix_fmt, s.options = 64, 64, pix_fmt, opts
            for i in range(2):
                f = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                f = f.reformat(format=pix_fmt)
                f.pts = i
                for p in s.encode(f):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    except (av.error.FFmpegError, ValueError) as e:
        raise ValueError(f"{encoder} refuses these settings ({', '.join(f'{k}={v}' for k, v in opts.items())}): "
                         f"{type(e).__name__} (the encoder's own message is printed above)") from e


def reencode_video(src, dst, short_side: int | None = 256, gop: int = 16, crf: int = 23, preset: str = "medium", *,
                   codec: str = "h264", tune: str | None = "fastdecode", qscale: int = 4) -> dict:
    """Re-encode one video for fast random access: `codec` "h264" (the default: libx264 at `crf` with x264's
    `preset` and `tune`, fastdecode unless tune is None or "none"), "mpeg4" (MPEG-4 Part 2) or "mjpeg" (both at the
    constant quantizer `qscale`, 2 = best .. 31); a keyframe at least every `gop` frames (MJPEG: every frame);
    short side scaled to `short_side` (even dims), the source's average frame rate as a constant rate (every decoded
    frame is kept, in order: the frame count is preserved; a variable-rate source becomes constant-rate), audio
    dropped. A display rotation (phone videos) is applied to the pixels and not written, so read_frames returns the
    same upright frames from the output as from the source (short side measured as displayed).
    Written to a temporary file in dst's folder and renamed into place, so an interrupted run never leaves a
    half-written dst. Raises data.VideoError for an unreadable source. Returns {"frames", "width", "height", "fps",
    "truncated"}: truncated is True when the source's tail could not be decoded (the decodable part is kept, as
    read_frames would see it)."""
    src, dst = str(src), str(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"refusing to overwrite the source {src}")
    if codec not in REENCODE_CODECS:
        raise ValueError(f"unknown codec {codec!r}: choose one of {', '.join(REENCODE_CODECS)}")
    fmt = REENCODE_FORMATS.get(os.path.splitext(dst)[1].lower(), "matroska")
    if fmt not in REENCODE_CODECS[codec][2]:
        fmt = "matroska"  # the name's container cannot hold this codec (see REENCODE_FORMATS)
    encoder, pix_fmt, opts = _encoder_settings(codec, fmt, gop, crf, preset, tune, qscale)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.{os.getpid()}.partial")
    n, truncated = 0, False
    try:
        with data._open(src) as inp:
            ist = inp.streams.video[0]
            ist.thread_count = 1
            rate = ist.average_rate or ist.guessed_rate or ist.base_rate
            if not rate or float(rate) <= 0:
                raise data.VideoError(src, "has no frame rate in its header")
            rate = Fraction(rate).limit_denominator(100000)
            with av.open(tmp, "w", format=fmt) as out:
                ost, to_rgb, to_yuv = None, VideoReformatter(), VideoReformatter()  # reused: see data._to_rgb
                try:
                    for frame in inp.decode(ist):
                        k = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # as data._to_rgb: turn upright
                        if k:
                            frame = av.VideoFrame.from_ndarray(
                                np.ascontiguousarray(np.rot90(to_rgb.reformat(frame, format="rgb24").to_ndarray(), k)),
                                format="rgb24")
                        if ost is None:
                            W, H = _reencode_size(frame.width, frame.height, short_side)
                            ost = out.add_stream(encoder, rate=rate)
                            ost.width, ost.height, ost.pix_fmt = W, H, pix_fmt
                            ost.codec_context.time_base = 1 / rate
                            ost.options = opts
                        scale = (frame.width, frame.height) != (ost.width, ost.height)
                        f = to_yuv.reformat(frame, width=ost.width, height=ost.height, format=pix_fmt,
                                            interpolation="AREA" if scale and ost.width < frame.width else None)
                        f.pts, f.time_base = n, ost.codec_context.time_base
                        n += 1
                        for p in ost.encode(f):
                            out.mux(p)
                except av.error.FFmpegError as e:
                    if n == 0:
                        raise data.VideoError(src, f"no frame could be decoded ({type(e).__name__}: {e})") from e
                    truncated = True  # a corrupt tail: keep what decoded, as read_frames does
                if ost is None:
                    raise data.VideoError(src, "contains no decodable frame")
                for p in ost.encode():
                    out.mux(p)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"frames": n, "width": ost.width, "height": ost.height, "fps": float(rate), "truncated": truncated}


def _reencode_one(job):
    src, dst, short_side, gop, crf, preset, settings = job
    if os.path.exists(dst) and data.check_video(dst)[1] is None:
        return src, "exists", None  # resumable: a finished output that decodes is kept
    try:
        r = reencode_video(src, dst, short_side, gop, crf, preset, **settings)
        return src, "truncated" if r["truncated"] else "ok", None
    except data.VideoError as e:
        return src, "failed", e.reason
    except Exception as e:  # noqa: BLE001 -- one odd file must not stop a dataset-sized conversion
        return src, "failed", f"{type(e).__name__}: {e}"


def reencode_dataset(src_root, dst_root, short_side=256, gop=16, crf=23, workers=2, preset="medium", progress=True, *,
                     codec="h264", tune="fastdecode", qscale=4):
    """Re-encode every video under src_root into the same relative path under dst_root (see reencode_video for
    codec, tune and qscale), in `workers` processes (one encoder thread each). Copies split/annotation files (.txt
    .csv .json). Never writes under src_root; skips outputs that already exist and decode (resumable: an existing
    output is kept whatever settings wrote it). Returns {status: [paths]} with statuses ok, truncated, exists,
    failed, and "reasons": {path: reason} for the failed ones. Raises data.DatasetError for settings the encoder refuses,
    before any video is touched."""
    import multiprocessing as mp
    src_root, dst_root = Path(src_root).resolve(), Path(dst_root).resolve()
    if not src_root.is_dir():
        raise data.DatasetError(f"--src {src_root} is not a folder")
    if dst_root == src_root or src_root in dst_root.parents or dst_root in src_root.parents:
        raise data.DatasetError(f"--dst {dst_root} must be outside --src {src_root} (and not contain it): the source is "
                           f"never overwritten, and outputs inside it would be picked up as sources next time")
    try:
        check_reencode_settings(codec, gop, crf, preset, tune, qscale)
    except ValueError as e:
        raise data.DatasetError(str(e)) from e
    try:  # the destination is the problem when it cannot be written: say so once, before any source is read
        dst_root.mkdir(parents=True, exist_ok=True)
        probe = dst_root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise data.DatasetError(f"cannot write into --dst {dst_root} ({e.strerror or e}): choose a folder you can "
                                f"write to, with room for the re-encoded videos") from e
    settings = dict(codec=codec, tune=tune, qscale=qscale)
    videos = data._find_videos(src_root)
    jobs = [(str(p), str(dst_root / p.relative_to(src_root)), short_side, gop, crf, preset, settings) for p in videos]
    for p in sorted(src_root.rglob("*")):
        if p.is_file() and p.suffix.lower() in REENCODE_COPY:
            q = dst_root / p.relative_to(src_root)
            if not q.exists():
                q.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, q)
    result = {"ok": [], "truncated": [], "exists": [], "failed": [], "reasons": {}}
    bar = tqdm(total=len(jobs), desc=f"re-encoding -> {dst_root}", unit="video", disable=not progress)
    if workers <= 1:
        results = map(_reencode_one, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(_reencode_one, jobs, chunksize=1)
    try:
        for src, status, reason in results:
            result[status].append(src)
            if reason:
                result["reasons"][src] = reason
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return result


def main(argv=None):
    r = argparse.ArgumentParser(
        description="Re-encode every video under --src for fast random access (same relative paths and file names "
                    "under --dst; resumable). The default, H.264 with x264's fastdecode tuning, a keyframe every 16 "
                    "frames and a 256-pixel short side, is the choice of scripts/bench.py's re-encode section "
                    "(BENCHMARKS.md): of the formats that decode 16-frame clips fast enough for 16 cores to feed a GPU "
                    "at 720 clips/s, the one with the smallest files at x264's default quality (CRF 23). fastdecode "
                    "turns off CABAC and the deblocking filter: a little more disk, much cheaper decoding.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--src", required=True, help="dataset root to read (never written)")
    r.add_argument("--dst", required=True, help="output root (same layout and names; must be outside --src)")
    r.add_argument("--short-side", type=int, default=256, help="scale so the short side is this (0: keep the size)")
    r.add_argument("--codec", default="h264", choices=list(REENCODE_CODECS),
                   help="h264: libx264 (--crf, --preset, --tune); mpeg4: MPEG-4 Part 2 (--gop, --qscale): more "
                        "clips/s per core for larger files and a lower PSNR, when cores are short and disk is not; "
                        "mjpeg: every frame a JPEG (--qscale): many times larger, no faster than h264 fastdecode, "
                        "for comparisons (scripts/bench.py, BENCHMARKS.md)")
    r.add_argument("--gop", type=int, default=16, help="keyframe interval in frames (x264/mpeg4 keyint; 1: "
                                                        "all-intra; ignored by mjpeg, which is all-intra)")
    r.add_argument("--crf", type=int, default=23, help="h264: x264 constant rate factor (lower = better quality, "
                                                        "larger)")
    r.add_argument("--preset", default="medium", help="h264: x264 preset (encoding speed vs file size)")
    r.add_argument("--tune", default="fastdecode",
                   help="h264: x264 tune. fastdecode: no CABAC, no deblocking, no weighted prediction (slightly "
                        "larger files, much faster decoding); 'none': x264's default tools (the smallest files, what "
                        "`reencode` wrote before); or any other x264 tune, e.g. film")
    r.add_argument("--qscale", type=int, default=4, help="mpeg4/mjpeg: constant quantizer, 2 (best) .. 31")
    r.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="parallel processes")
    a = r.parse_args(argv)
    try:
        res = reencode_dataset(a.src, a.dst, a.short_side or None, a.gop, a.crf, a.workers, a.preset,
                               codec=a.codec, tune=a.tune, qscale=a.qscale)
    except data.DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"{len(res['ok'])} re-encoded, {len(res['exists'])} already done (kept), "
          f"{len(res['truncated'])} with an undecodable tail (decodable part kept), {len(res['failed'])} unreadable")
    for p in sorted(res["truncated"]):
        print(f"  TRUNCATED  {p}")
    for p in sorted(res["failed"]):
        print(f"  BROKEN     {p}: {res['reasons'][p]}")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(training.command(main))
