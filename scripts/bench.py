"""
Benchmarks: is the accelerator fed and busy? One command measures the three places a video SSL step spends time (and
which file format feeds it best) and writes a JSON file and BENCHMARKS.md (the markdown is generated here; never edit
it by hand).

  1. model step    training steps/s, clips/s, MFU and peak memory of the real step shapes -- CVRL (R3D + MLP head +
                   NT-Xent, SGD) and LSS (VideoViT student fwd+bwd + EMA teacher fwd + EMA update, AdamW) -- on
                   synthetic tensors already on the device, for a ladder of variants: fp32, bf16 autocast,
                   + channels_last_3d (CVRL), + torch.compile, + fused optimizer. FLOPs are counted analytically
                   (torch.utils.flop_counter on the meta device: conv, matmul and attention; 2 FLOPs per MAC) and
                   cross-checked against docs/perf.md.
  1b. step as run  the training scripts' own steps, cvrl.train_step and lss.train_step (their augmentation, views,
                   losses, EMA teacher, optimizer, schedules, log values), from a uint8 batch in pinned host memory
                   copied to the device each step, beside section 1's step of the same model; graph breaks of the
                   compiled step; then the CVRL step fed by the real training loader (workers = cores - 2) on videos
                   in `scripts/reencode.py`'s format: clips/s and the fraction of the time spent waiting for data.
  2. input pipeline clips/s that data.py delivers (decode in DataLoader workers + augmentation on the device) on
                   videos this script encodes itself (H.264 with x264's default keyframe interval and with a keyframe
                   every 16 frames, MPEG-4 Part 2 AVI like UCF101), decoded frames per clip, CVRL's two-clip
                   sampling (one open, shared seeks) against decoding the whole video, and the data-wait fraction
                   of a real CVRL training loop fed by the loader.
  3. augmentation  data.augment on a uint8 (B, 3, T, H, W) batch against a per-clip torchvision.transforms.v2 loop.
  4. re-encode     which format `python scripts/reencode.py` should write: one camera-like source re-encoded by
                   reencode.reencode_video in several variants (keyframe interval, all-intra, x264 fastdecode, CRF,
                   resize, MPEG-4 Part 2, MJPEG); per variant the disk cost, PSNR, random 16x2 clips/s and CVRL
                   pairs/s per core and frames decoded per clip (on a GPU also NVDEC through PyAV's hwaccel).

    python scripts/bench.py                      # --preset cpu without a GPU (small shapes, a few minutes)
    python scripts/bench.py --preset gpu         # the real shapes: R3D-50 16x224, ViT-B/16 8x224, 224 crops
    python scripts/bench.py --preset smoke       # tiniest shapes, < 1 min (the test suite runs this)
    python scripts/bench.py --only pipeline --workers 12
    python scripts/bench.py --preset gpu --only asrun --asrun-modes compiled   # 1b, the compiled steps as run
    python scripts/bench.py --only reencode          # the re-encode formats only (cpu preset: ~2 minutes)

BENCHMARKS.md keeps the data of every preset it has seen (in a comment at its end): a GPU run adds its section
and keeps the CPU one. Rows of a preset that has not been run say so; nothing is ever estimated.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvrl  # noqa: E402
import data  # noqa: E402
import reencode  # noqa: E402  (scripts/reencode.py, beside this file)
import lss  # noqa: E402  (section 1b runs lss.train_step itself)
import training  # noqa: E402
from lss import VideoViT  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s, 2 per MAC), by substring of torch.cuda.get_device_name(). MFU is always
# against the bf16 peak, also for the fp32 rows (that is the point of the comparison). perf.md §3.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]
PENDING = "pending: no GPU was available when this file was generated"
PERF_MD = {"r3d50 16x224": 45.52e9, "ViT-B/16 divST 8x224": 195.8e9}  # MACs, docs/perf.md §1
# Which rule a run's training FLOPs (and so its MFU) were counted by: 2 = train_flops_per_clip's (backward without
# the first convolution's input gradient). Runs recorded before it have no "flop_rule" (backward = 2 x forward).
FLOP_RULE = 2


# ----------------------------------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class VideoFormat:
    name: str
    codec: str        # libx264 | mpeg4
    ext: str
    width: int
    height: int
    fps: int
    gop: int | None   # None: the encoder's default (x264: keyint 250)
    note: str = ""
    tune: str | None = None  # x264 --tune (fastdecode: what `scripts/reencode.py` writes)


def _formats(seconds_scale=1.0, small=False):
    if small:
        return [VideoFormat("H.264 160x120 default GOP", "libx264", ".mp4", 160, 120, 15, None),
                VideoFormat("H.264 160x120 GOP 16", "libx264", ".mp4", 160, 120, 15, 16),
                VideoFormat("MPEG-4 AVI 160x120", "mpeg4", ".avi", 160, 120, 15, 300)]
    return [VideoFormat("H.264 320x240 default GOP", "libx264", ".mp4", 320, 240, 30, None, "x264 keyint 250"),
            VideoFormat("H.264 340x256 default GOP", "libx264", ".mp4", 340, 256, 30, None, "Kinetics-like"),
            VideoFormat("H.264 320x240 GOP 16", "libx264", ".mp4", 320, 240, 30, 16, "x264's default tools"),
            VideoFormat("H.264 340x256 GOP 16", "libx264", ".mp4", 340, 256, 30, 16, "x264's default tools"),
            VideoFormat("H.264 340x256 GOP 16 fastdecode", "libx264", ".mp4", 340, 256, 30, 16,
                        "`scripts/reencode.py`'s default", "fastdecode"),
            VideoFormat("MPEG-4 AVI 320x240", "mpeg4", ".avi", 320, 240, 25, 300, "UCF101-like; keyint 300, XviD's maximum")]


@dataclass
class Reencode:
    name: str
    codec: str = "h264"                 # reencode.REENCODE_CODECS
    gop: int = 16
    tune: str | None = "fastdecode"     # x264 only; None: x264's default tools (what reencode wrote before)
    crf: int = 23                       # x264 only
    qscale: int = 4                     # mpeg4 / mjpeg only
    short_side: int | None = 256        # None: the source's size
    ext: str = ".mp4"                   # the container follows the name, as in reencode_dataset
    note: str = ""


def _reencode_variants(small=False):
    if small:  # the smoke test's 128x96 source: short side 64
        return [Reencode("H.264 GOP 16, x264 default tools", tune=None, short_side=64, note="the old default"),
                Reencode("H.264 GOP 16, fastdecode", short_side=64, note="`reencode` default"),
                Reencode("MJPEG q4 (AVI)", codec="mjpeg", short_side=64, ext=".avi", note="all-intra")]
    return [Reencode("H.264 GOP 16, x264 default tools", tune=None, note="`reencode --tune none`; the old default"),
            Reencode("H.264 GOP 16, fastdecode", note="`reencode` default"),
            Reencode("H.264 GOP 8, fastdecode", gop=8),
            Reencode("H.264 all-intra, fastdecode", gop=1),
            Reencode("H.264 GOP 16, fastdecode, CRF 26", crf=26, note="lower quality"),
            Reencode("H.264 GOP 16, fastdecode, source size", short_side=None, note="no resize"),
            Reencode("MPEG-4 Part 2 GOP 16 q4", codec="mpeg4"),
            Reencode("MJPEG q4 (AVI)", codec="mjpeg", ext=".avi", note="all-intra")]


# asrun (section 1b): the loader row's videos, `videos` camera-like sources of `source` = (W, H, fps, seconds)
# re-encoded by reencode_video's defaults at `short_side` (whose size is also the host batch's canvas), and its
# untimed and timed steps in rounds of one batch per worker. LSS models' `views`: lss.py's --local-* flags.
PRESETS = {
    "smoke": dict(
        models=[dict(kind="cvrl", name="CVRL tiny 4x32", arch="tiny", frames=4, stride=2, size=32, batch=4,
                     head_hidden=64),
                dict(kind="lss", name="LSS ViT 2x32 (w64, 2 blocks, patch 8)", width=64, layers=2, heads=1, patch=8,
                     frames=2, size=32, batch=2, out_dim=32, concepts=16,
                     views=dict(local_views=2, local_frames=2, local_size=16, local_stride=1))],
        compile=False, warmup=0, windows=2, per_window=1, flop_checks=1,
        formats=_formats(small=True), seconds=2, n_videos=1, clip=(8, 2), crop=32,
        decode_clips=2, loader_batch=2, loader_batches=2, pair_reps=2, rounds=1, wait_model="tiny", wait_steps=2,
        wait_batch=2, wait_crop=32, wait_formats=1,
        augment=dict(B=2, T=4, H=60, W=80, size=32, windows=2),
        reencode=dict(source=(128, 96, 15, 2), rounds=1, clips=2, pairs=1),
        reencode_variants=_reencode_variants(small=True), decoders=dict(clips=2, pairs=2, rounds=1),
        asrun=dict(source=(128, 96, 15, 2), short_side=64, videos=2, loader=True, loader_warm_rounds=1,
                   loader_rounds=4)),
    "cpu": dict(
        models=[dict(kind="cvrl", name="CVRL tiny 8x48", arch="tiny", frames=8, stride=2, size=48, batch=8,
                     head_hidden=512),
                dict(kind="lss", name="LSS ViT 4x64 (patch 16, w192, 4 blocks)", width=192, layers=4, heads=3,
                     patch=16, frames=4, size=64, batch=2, out_dim=512, concepts=400,
                     views=dict(local_views=2, local_frames=2, local_size=32, local_stride=2))],
        compile=True, warmup=1, windows=5, per_window=1,
        formats=_formats(), seconds=10, n_videos=2, clip=(16, 2), crop=112,
        decode_clips=24, loader_batch=4, loader_batches=8, pair_reps=6, rounds=3, wait_model="tiny", wait_steps=8,
        wait_batch=4, wait_crop=48, wait_formats=2,
        augment=dict(B=4, T=16, H=256, W=340, size=224, windows=3),
        reencode=dict(source=(640, 480, 30, 10), rounds=5, clips=12, pairs=6),
        reencode_variants=_reencode_variants(), decoders=dict(clips=16, pairs=10, rounds=3),
        asrun=dict(source=(640, 480, 30, 6), short_side=256, videos=2, loader=True, loader_warm_rounds=1,
                   loader_rounds=8)),
    "gpu": dict(
        # asrun_batch: section 1b's batch in clips when section 1 did not find one in the same call (the largest
        # bf16 batch on an H200, BENCHMARKS.md); halved where the step as run does not fit
        models=[dict(kind="cvrl", name="CVRL R3D-50 16x224", arch="r3d50", frames=16, stride=2, size=224, batch=None,
                     head_hidden=2048, batch_start=64, batch_cap=1024, asrun_batch=256),
                dict(kind="lss", name="LSS ViT-B/16 8x224 (divided space-time)", width=768, layers=12, heads=12,
                     patch=16, frames=8, size=224, batch=None, out_dim=512, concepts=400, batch_start=16,
                     batch_cap=512, asrun_batch=64,
                     views=dict(local_views=8, local_frames=8, local_size=96, local_stride=4))],  # SVT's views
        compile=True, warmup=5, windows=5, per_window=10,
        formats=_formats(), seconds=10, n_videos=4, clip=(16, 2), crop=224,
        decode_clips=48, loader_batch=32, loader_batches=12, pair_reps=16, rounds=4, wait_model="r3d50", wait_steps=30,
        wait_batch=32, wait_crop=224, wait_formats=2,
        augment=dict(B=64, T=16, H=256, W=340, size=224, windows=5),
        reencode=dict(source=(640, 480, 30, 10), rounds=5, clips=12, pairs=6),
        reencode_variants=_reencode_variants(), decoders=dict(clips=16, pairs=10, rounds=3),
        asrun=dict(source=(640, 480, 30, 6), short_side=256, videos=2, loader=True, loader_warm_rounds=1,
                   loader_rounds=2)),
}


# ----------------------------------------------------------------------------------------------------------------------
# environment, timing, FLOPs
# ----------------------------------------------------------------------------------------------------------------------

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["python", "scripts/bench.py"] + sys.argv[1:]),
        "device": gpu or "CPU only (no GPU visible)",
        "cpu": cpu_model(), "cpu_cores": len(os.sched_getaffinity(0)),
        "load_avg": [round(x, 1) for x in os.getloadavg()],
        "torch": torch.__version__, "torchvision": __import__("torchvision").__version__, "av": av.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cuda": torch.version.cuda, "git": commit, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def peak_flops(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p for k, p in PEAK_BF16 if k in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup, windows, per_window):
    """Median seconds per call of `step` over `windows` windows of `per_window` calls, after `warmup` calls.
    CUDA events on the GPU (GPU time between the first and last kernel of a window), wall clock on the CPU."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(windows):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(per_window):
                step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / per_window)
        else:
            t0 = time.perf_counter()
            for _ in range(per_window):
                step()
            times.append((time.perf_counter() - t0) / per_window)
    return statistics.median(times), times


def _on_meta(build):
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data (e.g. .tolist()): build on CPU
        return build().to("meta")


def count_macs(build, shape):
    """Forward MACs of build() on one input of `shape` (batch 1), counted on the meta device: no memory, no time.
    torch.utils.flop_counter counts 2 FLOPs per MAC for conv/linear/matmul and the attention matmuls (on the
    meta device SDPA decomposes into bmm, which is counted; CPU's fused SDPA kernel is not registered with the
    counter). BatchNorm, activations, softmax and pooling are not counted, as in every model zoo's GFLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    model = _on_meta(build)
    x = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


# ----------------------------------------------------------------------------------------------------------------------
# 1. model step
# ----------------------------------------------------------------------------------------------------------------------

def native_bf16(device):
    """bf16 autocast only pays off with bf16 hardware: GPUs, and CPUs with AVX512-BF16 or AMX. Elsewhere oneDNN
    emulates it and a bf16 step is several times slower than fp32."""
    if device.type == "cuda":
        return True
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def variants(kind, compile_ok, bf16_base=True):
    """fp32, bf16 autocast, then a cumulative ladder on the device's better dtype (bf16 on GPUs; fp32 on a CPU
    without bf16 hardware, where the bf16 row shows the emulation cost): + channels_last_3d (CVRL), + torch.compile,
    + fused optimizer. With a bf16 base, CVRL also gets fp32 + channels_last_3d alone (the layout matters without
    bf16 too)."""
    base = "bf16" if bf16_base else "fp32"
    v = [dict(name="fp32", bf16=False, cl3d=False, compile=False, fused=False),
         dict(name="bf16 autocast", bf16=True, cl3d=False, compile=False, fused=False)]
    cl = kind == "cvrl"
    name = base
    if cl:
        name += " + channels_last_3d"
        v.append(dict(name=name, bf16=bf16_base, cl3d=True, compile=False, fused=False))
    name += " + torch.compile"
    v.append(dict(name=name, bf16=bf16_base, cl3d=cl, compile=True, fused=False,
                  skip=None if compile_ok else "skipped in this preset (compiling takes minutes)"))
    name = (name if compile_ok else name.replace(" + torch.compile", "")) + " + fused " + ("SGD" if cl else "AdamW")
    v.append(dict(name=name, bf16=bf16_base, cl3d=cl, compile=compile_ok, fused=True))
    if cl and bf16_base:
        v.append(dict(name="fp32 + channels_last_3d", bf16=False, cl3d=True, compile=False, fused=False))
    return v


def build_cvrl_step(m, batch, device, v):
    """CVRL's real step on `batch` clips (batch/2 videos x 2 views in one forward, as cvrl.py): R3D + MLP head,
    NT-Xent, SGD momentum with cvrl.configure_optimizer's param groups."""
    enc = cvrl.build_encoder(m["arch"])
    model = nn.Sequential(enc, cvrl.ProjectionHead(enc.feature_dim, m["head_hidden"], 128, 3)).to(device)
    if v["cl3d"]:
        model = model.to(memory_format=torch.channels_last_3d)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([dict(params=decay, weight_decay=1e-6), dict(params=no_decay, weight_decay=0.0)], lr=0.1,
                          momentum=0.9, fused=True if v["fused"] else None)
    fwd = torch.compile(model) if v["compile"] else model
    x = torch.rand(batch, 3, m["frames"], m["size"], m["size"], device=device)  # (B, C, T, H, W)
    if v["cl3d"]:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    half = batch // 2

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=v["bf16"]):
            z = fwd(x)
            loss = cvrl.nt_xent(z[:half], z[half:], 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step, (model, opt, x)


def build_lss_step(m, batch, device, v):
    """The shape of LSS's step: a VideoViT student fwd+bwd and an EMA-teacher VideoViT fwd on the same `batch`
    clips (the global views), cross-entropy between their softmaxed similarities to fixed concept vectors, DINO's
    per-parameter gradient clipping, AdamW, then the EMA update teacher <- m teacher + (1-m) student (_foreach ops,
    as lss.ema_update). Local views are left out: per clip seen by both networks this is 3 + 1 forward costs."""
    def vit():
        return VideoViT(m["size"], m["patch"], m["width"], m["layers"], m["heads"], m["out_dim"], num_frames=m["frames"])
    student = vit().to(device)
    teacher = vit().to(device)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False).eval()
    decay = [p for n, p in student.named_parameters() if not (n.endswith(".bias") or p.ndim <= 1)]
    no_decay = [p for n, p in student.named_parameters() if n.endswith(".bias") or p.ndim <= 1]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.04), dict(params=no_decay, weight_decay=0.0)],
                            lr=1e-5, fused=True if v["fused"] else None)
    s_fwd = torch.compile(student) if v["compile"] else student
    t_fwd = torch.compile(teacher) if v["compile"] else teacher
    concepts = F.normalize(torch.randn(m["concepts"], m["out_dim"], device=device), dim=-1)
    x = torch.rand(batch, m["frames"], 3, m["size"], m["size"], device=device)  # (B, T, C, H, W): ViT layout
    s_params, t_params = list(student.parameters()), list(teacher.parameters())

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=v["bf16"]):
            s = s_fwd(x)
            with torch.no_grad():
                t = t_fwd(x)
        s_sim = F.normalize(s.float(), dim=-1) @ concepts.T
        t_sim = F.normalize(t.float(), dim=-1) @ concepts.T
        loss = -(F.softmax(t_sim / 0.04, -1) * F.log_softmax(s_sim / 0.1, -1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in s_params if p.grad is not None]
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [(3.0 / (n + 1e-6)).clamp(max=1.0) for n in norms])
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(t_params, 0.996)
            torch._foreach_add_(t_params, s_params, alpha=0.004)
        return loss
    return step, (student, teacher, opt, x)


def fwd_macs(m, frames=None, size=None, stem=False):
    """Forward MACs per clip of the model row `m` (another frame count or crop side: LSS's local views); with
    stem=True, those of its first convolution alone."""
    frames, size = frames or m["frames"], size or m["size"]
    count = first_conv_macs if stem else count_macs
    if m["kind"] == "cvrl":
        def build():
            enc = cvrl.build_encoder(m["arch"])
            return nn.Sequential(enc, cvrl.ProjectionHead(enc.feature_dim, m["head_hidden"], 128, 3).eval())
        return count(build, (1, 3, frames, size, size))
    return count(lambda: VideoViT(m["size"], m["patch"], m["width"], m["layers"], m["heads"], m["out_dim"],
                                  num_frames=m["frames"]), (1, frames, 3, size, size))


def first_conv_macs(build, shape):
    """Forward MACs of the first convolution build()'s forward applies (R3D's stem, the ViT's patchify conv1), on
    one input of `shape`, counted on the meta device: its output size x (input channels / groups x kernel volume)."""
    model = _on_meta(build)
    calls = []
    hooks = [mod.register_forward_hook(lambda mod, inp, out: calls.append(
                 out.numel() * mod.in_channels // mod.groups * int(np.prod(mod.kernel_size))))
             for mod in model.modules() if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    with torch.no_grad():
        model(torch.empty(shape, device="meta"))
    for h in hooks:
        h.remove()
    return calls[0] if calls else 0


def train_flops_per_clip(m, macs, stem_macs):
    """Training FLOPs per clip. How FLOPs are counted (BENCHMARKS.md says the same): forward = 2 FLOPs per MAC of
    every conv, linear and attention matmul (count_macs; BatchNorm, LayerNorm, activations, softmax, pooling, the
    losses, the augmentation and the optimizer are not counted); backward = 2 x forward (the gradients of the input
    and of the weights, each as costly as the forward) minus the input gradient of the first convolution, which
    autograd never computes because the clip needs no gradient (R3D-50 16x224: 4.72 GMAC, 9.4 GFLOP of the 273 a
    3 x forward rule would count). CVRL: fwd + bwd. LSS: the student's fwd + bwd and the EMA teacher's fwd."""
    fwd_bwd = 3 * 2 * macs - 2 * stem_macs
    return fwd_bwd if m["kind"] == "cvrl" else fwd_bwd + 2 * macs


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def find_batch(m, device, log):
    """GPU: the largest power-of-2 batch (times batch_start, up to the cap) at which an eager bf16-autocast step (the
    most memory-hungry of the bf16 variants: no compiled fusions) runs. Training runs in bf16, so that is the batch
    that matters; every variant then uses it (fp32 rows that do not fit say so), and rows compare like with like.
    Activation memory grows linearly with the batch, so one step at batch_start predicts the largest batch that
    fits (15% margin); that batch is tried, and halved on out-of-memory. Each new shape costs a cuDNN autotune
    (seconds for 3D convolutions), so this tries 2-3 shapes instead of doubling through all of them."""
    builder = build_cvrl_step if m["kind"] == "cvrl" else build_lss_step
    probe_variant = dict(bf16=native_bf16(device), cl3d=False, compile=False, fused=False)

    def fits(b):
        oom = False
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step, keep = builder(m, b, device, probe_variant)
            step()
            step()
            sync(device)
        except torch.cuda.OutOfMemoryError:
            oom = True
        step = keep = None  # noqa: F841 -- drop references before freeing
        peak = torch.cuda.max_memory_allocated(device)
        _free(device)
        log(f"    batch {b} " + ("does not fit" if oom else f"fits ({peak / 2 ** 30:.1f} GiB)"))
        return not oom, peak

    b0 = m["batch_start"]
    ok, peak = fits(b0)
    if not ok:
        raise RuntimeError(f"{m['name']}: even batch {b0} does not fit")
    total = torch.cuda.get_device_properties(device).total_memory
    b = b0
    while b * 2 <= m["batch_cap"] and peak * (b * 2 / b0) * 1.15 < total:
        b *= 2
    while b > b0:
        if fits(b)[0]:
            return b
        b //= 2
    return b0


def bench_models(P, device, log):
    peak = peak_flops(device)
    out = {"peak_flops_bf16": peak, "models": [], "flop_check": [], "bf16_base": native_bf16(device)}
    # cross-check of the FLOP counter against perf.md's analytic numbers (full-size models, meta device)
    checks = [("r3d50 16x224", lambda: cvrl.build_encoder("r3d50"), (1, 3, 16, 224, 224)),
              ("ViT-B/16 divST 8x224", lambda: VideoViT(224, 16, 768, 12, 12, 512, num_frames=8), (1, 8, 3, 224, 224))]
    for name, build, shape in checks[:P.get("flop_checks", 2)]:  # ViT-B is built on the CPU first (seconds)
        macs = count_macs(build, shape)
        ref = PERF_MD[name]
        out["flop_check"].append(dict(model=name, gmac_counted=macs / 1e9, gmac_perf_md=ref / 1e9,
                                      rel_diff=macs / ref - 1))
        log(f"  FLOPs {name}: {macs / 1e9:.2f} GMAC counted vs {ref / 1e9:.2f} in perf.md")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as cvrl.py/lss.py do
    for m in P["models"]:
        macs, stem = fwd_macs(m), fwd_macs(m, stem=True)
        flops_clip = train_flops_per_clip(m, macs, stem)
        batch = m["batch"] if m["batch"] else find_batch(m, device, log)
        res = dict(name=m["name"], kind=m["kind"], fwd_gmac_per_clip=macs / 1e9, stem_gmac_per_clip=stem / 1e9,
                   flop_rule=FLOP_RULE, train_gflop_per_clip=flops_clip / 1e9, batch_clips=batch,
                   batch_source="preset" if m["batch"]
                   else "largest power of 2 that fits (bf16 eager)", rows=[])
        log(f"  {m['name']}: {macs / 1e9:.3f} GMAC fwd/clip, batch {batch} clips")
        builder = build_cvrl_step if m["kind"] == "cvrl" else build_lss_step
        # On a shared CPU the load drifts over minutes, so windows are taken round-robin over the variants (each
        # variant sees the same mix of quiet and busy moments). A GPU is measured one variant at a time: it is not
        # shared, and holding every variant's model and optimizer at the largest batch would not fit.
        interleave = device.type != "cuda"
        pending = []  # (row, step, keep) waiting for their round-robin windows

        def finish(row, times):
            sec = statistics.median(times)
            row.update(step_s=sec, window_s=times, steps_per_s=1 / sec, clips_per_s=batch / sec,
                       tflops=flops_clip * batch / sec / 1e12,
                       mfu=flops_clip * batch / sec / peak if peak else None,
                       peak_mem_gb=torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None)
            log(f"    {row['variant']:<48} {row['steps_per_s']:.3f} steps/s  {row['clips_per_s']:.2f} clips/s"
                + (f"  MFU {row['mfu']:.1%}" if row["mfu"] else "")
                + (f"  {row['peak_mem_gb']:.1f} GB" if row["peak_mem_gb"] else "")
                + f"  (first step {row['first_step_s']:.1f} s)")

        for v in variants(m["kind"], P["compile"], native_bf16(device)):
            row = dict(variant=v["name"])
            res["rows"].append(row)
            if P.get("only_variants") and v["name"] not in P["only_variants"]:
                v = dict(v, skip="not run in this call (--variants)")
            if v.get("skip"):
                row["skipped"] = v["skip"]
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step = keep = None
            try:
                torch.manual_seed(0)
                step, keep = builder(m, batch, device, v)
                t0 = time.perf_counter()
                step()  # first call: compiles, autotunes, allocates
                sync(device)
                row["first_step_s"] = time.perf_counter() - t0
                if interleave:
                    for _ in range(P["warmup"]):
                        step()
                    pending.append((row, step, keep))
                else:
                    finish(row, time_steps(step, device, P["warmup"], P["windows"], P["per_window"])[1])
            except Exception as e:  # noqa: BLE001 -- one failing variant (no compiler, OOM) must not stop the rest
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                log(f"    {v['name']}: {row['error']}")
            if not interleave:
                step = keep = None  # noqa: F841
                if v["compile"]:
                    torch._dynamo.reset()  # compiled graphs of this variant are not reused by the next
                _free(device)
        if pending:
            times = [[] for _ in pending]
            for _ in range(P["windows"]):
                for i, (row, step, _) in enumerate(pending):
                    times[i].append(time_steps(step, device, 0, 1, P["per_window"])[0])
            for (row, _, _), t in zip(pending, times):
                finish(row, t)
            pending = None
            _free(device)
        out["models"].append(res)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 1b. the step as run
# ----------------------------------------------------------------------------------------------------------------------
# Section 1 times the model alone, on float clips already on the device. A training step does more: the uint8 batch
# crosses from host memory, data.augment draws and applies every view's crop and colour on the device, LSS makes
# 2 global + L local views and evaluates its losses on the concept spaces, the EMA teacher and the centre are
# updated, and the log values are summed on the device (and brought to the host every log_every steps). This section
# times the training scripts' own cvrl.train_step and lss.train_step, on networks, optimizers and schedules built as
# cvrl.train and lss.train build them, from a uint8 batch in pinned host memory (an ordinary tensor on a CPU) copied
# to the device each step as the loop copies a batch; beside it, section 1's step of the same model at the same
# batch. Then the "loader" row: the CVRL step fed by the training loader itself, on videos in the format
# `python scripts/reencode.py` writes, reporting clips/s and how much of the time the loop waits for data.

ASRUN_STEPS = 10_000  # the schedules' length in steps (lr warmup and cosine, EMA momentum): step numbers wrap past it


def matching_variant(kind, device, compiled):
    """Section 1's variant that does what the training script does on this device: bf16 autocast (--amp auto) and,
    for CVRL, channels_last_3d on a GPU, fp32 on a CPU; torch.compile with --compile; the optimizer not fused."""
    gpu = device.type == "cuda"
    name = ("bf16 + channels_last_3d" if kind == "cvrl" else "bf16 autocast") if gpu else "fp32"
    if compiled:
        name = name.replace(" autocast", "") + " + torch.compile"
    return dict(name=name, bf16=gpu, cl3d=gpu and kind == "cvrl", compile=compiled, fused=False)


def random_concepts(K, D, device, seed=0):
    """LSS's concept spaces with the sizes of a run on Kinetics-400's first K class names (K category vectors; the
    descriptions lss_concepts.json has for them, 5 per class, with their class assignment), filled with random unit
    vectors: no text-tower weights can be downloaded here, and the step's cost does not depend on the values."""
    names = lss.load_concepts_file()["labels"]["kinetics400"]
    if K > len(names):
        raise ValueError(f"random_concepts: K={K} concepts asked, but Kinetics-400 has {len(names)} class names; "
                         f"lower 'concepts' in the preset")
    desc, _ = lss.descriptions_for(names[:K])
    counts = torch.tensor([len(desc[n]) for n in names[:K]])
    g = torch.Generator().manual_seed(seed)
    spaces = dict(C_cat=F.normalize(torch.randn(K, D, generator=g), dim=-1),                    # (K, D)
                  C_desc=F.normalize(torch.randn(int(counts.sum()), D, generator=g), dim=-1),  # (M, D)
                  assign=torch.repeat_interleave(torch.arange(K), counts))                     # (M,)
    return {k: v.to(device) for k, v in spaces.items()}


def _log_due(mean, step, every):
    """The loop's log line: a NaN check and the step means brought to the host (on a GPU, a sync)."""
    if (step + 1) % every == 0:
        mean.check_finite(step + 1, "a lower lr")
        mean.read()


def build_cvrl_asrun(m, videos, device, compiled):
    """cvrl.train's network, optimizer, lr schedule and augmentations for `videos` videos (2 clips each) per step.
    -> (run_step(video, step): the loop body, cvrl.train_step on uint8 (B, 2, T, H, W, 3) on the device, its log
    values summed by training.Mean; cfg; what must stay alive)."""
    cfg = cvrl.Config(arch=m["arch"], frames=m["frames"], stride=m.get("stride", 2), size=m["size"],
                      head_hidden=m["head_hidden"], temperature=0.1, batch_size=videos, compile=compiled,
                      canvas=tuple(m["canvas"]))
    encoder = cvrl.build_encoder(cfg.arch)
    model = nn.Sequential(encoder, cvrl.ProjectionHead(encoder.feature_dim, cfg.head_hidden, cfg.head_out,
                                                       cfg.head_layers)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    lr = cfg.lr * videos / 1024
    optimizer = cvrl.configure_optimizer(model, lr, cfg.weight_decay, cfg.momentum, cfg.optimizer)
    if compiled:
        model[0] = torch.compile(model[0])  # the encoder only, as cvrl.train does
    model.train()
    aug = cvrl.augment_configs(cfg)
    warmup = round(cfg.warmup_epochs / cfg.epochs * ASRUN_STEPS)
    mean = training.Mean()

    def run_step(video, step):
        step %= ASRUN_STEPS
        mean.add(cvrl.train_step(cfg, model, optimizer, video, step,
                                 training.warmup_cosine(step, ASRUN_STEPS, warmup, lr), aug))
        _log_due(mean, step, cfg.log_every)
    return run_step, cfg, (model, optimizer)


def build_lss_asrun(m, videos, device, compiled):
    """lss.train's student, EMA teacher, loss on the concept spaces (random unit vectors: random_concepts),
    optimizer and schedules, for `videos` videos (2 global + L local views each) per step; --init random builds the
    CLIP with the network sizes of section 1's LSS row. -> (run_step(video, step), cfg, what must stay alive)."""
    v = m["views"]
    cfg = lss.Config(init="random", width=m["width"], layers=m["layers"], patch=m["patch"], embed_dim=m["out_dim"],
                     text_width=64, text_layers=1, frames=m["frames"], size=m["size"], canvas=tuple(m["canvas"]),
                     local_views=v["local_views"], local_frames=v["local_frames"], local_size=v["local_size"],
                     local_stride=v["local_stride"], batch_size=videos, epochs=1, compile=compiled)
    cfg = lss.resolve_temperatures(cfg, None)  # --init random's temperatures, as lss.parse_args sets them
    clip = lss.CLIP(lss.clip_config_from_flags(cfg))
    if clip.cfg.vision_heads != m["heads"]:
        raise ValueError(f"{m['name']}: lss.py gives width {m['width']} {clip.cfg.vision_heads} heads, the preset "
                         f"{m['heads']}: make them agree (heads = width // 64)")
    student_vit, teacher, _ = lss.build_networks(cfg, clip, device, print)
    del clip  # and its text tower: the concept vectors are random
    lss_loss = lss.LSSLoss(random_concepts(m["concepts"], m["out_dim"], device), cfg)
    optimizer = torch.optim.AdamW(lss.param_groups(student_vit, cfg.new_lr_scale), lr=0.0,
                                  weight_decay=cfg.weight_decay)
    schedule = lss.make_schedules(cfg, ASRUN_STEPS, cfg.lr * videos / 256)
    if compiled:  # in place, as lss.train does
        student_vit.compile(dynamic=False)
        teacher.compile(dynamic=False)
    student = lss.MultiView(student_vit)
    student.train()
    mean = training.Mean()

    def run_step(video, step):
        step %= ASRUN_STEPS
        mean.add(lss.train_step(cfg, student, teacher, lss_loss, optimizer, schedule, video, step))
        _log_due(mean, step, cfg.log_every)
    return run_step, cfg, (student, teacher, lss_loss, optimizer)


def graph_breaks():
    """torch._dynamo's counters since they were last cleared: graph breaks (with their reasons, one line each) and
    the graphs compiled."""
    from torch._dynamo.utils import counters
    reasons = []
    for key, n in counters["graph_break"].items():
        fn = re.search(r"<function (\S+) at", key)
        reasons.append(f"{n} x {key.splitlines()[0].strip()[:90]}" + (f" ({fn.group(1)})" if fn else ""))
    return dict(graph_breaks=sum(counters["graph_break"].values()), graphs=counters["stats"].get("unique_graphs", 0),
                graph_break_reasons=reasons)


def asrun_canvas(A):
    """(H, W) of the videos the loader row reads: the source scaled as reencode_video scales it."""
    W, H, _, _ = A["source"]
    w, h = reencode._reencode_size(W, H, A["short_side"])
    return h, w


def asrun_videos(A, cache, log):
    """A['videos'] camera-like sources (x264's default keyframe interval, as filmed), each re-encoded by
    reencode.reencode_video with its defaults, i.e. in the format `python scripts/reencode.py` writes (H.264, a
    keyframe every 16 frames, tune fastdecode, CRF 23), short side A['short_side']. Cached."""
    W, H, fps, secs = A["source"]
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(A["videos"]):
        src = cache / f"asrun-src-v1-{W}x{H}-{fps}fps-{secs}s-{i}.mp4"
        if not src.exists():
            tmp = src.with_name(src.name + ".tmp.mp4")
            data.write_video(tmp, textured_video(3000 + i, W, H, int(secs * fps)), fps, "libx264",
                             {"crf": "23", "threads": "1"})
            os.replace(tmp, src)
        dst = cache / f"asrun-reencoded-v1-{W}x{H}-{fps}fps-{secs}s-short{A['short_side']}-{i}.mp4"
        if not dst.exists():  # reencode_video writes a temporary file and renames it: never a half-written dst
            reencode.reencode_video(src, dst, A["short_side"])
        paths.append(str(dst))
    log(f"  loader videos: {len(paths)} x {W}x{H} {secs} s, re-encoded by reencode.reencode_video's defaults")
    return paths


def loader_row(run_step, cfg, videos, paths, canvas, device, workers, A, log):
    """The CVRL step fed by the training loader, built and looped over as cvrl.train does: data.VideoDataset with
    cvrl.PairSampler, data.make_loader (pinned memory on a GPU), training.Steps (which adds up the time the loop
    waits for a batch), the batch copied to the device, run_step. The first A['loader_warm_rounds'] x workers steps
    (worker start-up, then the batches decoded in parallel while the first ones were) are not timed; then
    A['loader_rounds'] x workers steps, up to a final sync."""
    warm, n = A["loader_warm_rounds"] * workers, A["loader_rounds"] * workers
    reps = -(-(warm + n + 1) * videos // len(paths))  # enough videos for every step below, in one epoch
    videolist = data.VideoList(paths * reps, [0] * (len(paths) * reps), ["x"])
    dataset = data.VideoDataset(videolist, cvrl.PairSampler(cfg.frames, cfg.stride, cfg.interval, cfg.power),
                                canvas=canvas, resample=True, min_frames=cfg.frames)
    loader = data.make_loader(dataset, videos, workers, shuffle=True, drop_last=True, seed=cfg.seed)
    steps = training.Steps(loader, 0, warm + n, len(loader), 0, videos)
    try:
        for step, batch in steps:
            video = batch["video"].to(device, non_blocking=True)  # (B, 2, T, H, W, 3) uint8: two clips per video
            run_step(video, step)
            if step + 1 == warm:
                sync(device)
                t0, wait0 = time.perf_counter(), steps.wait
        sync(device)
        dt, wait = time.perf_counter() - t0, steps.wait - wait0
    finally:
        del loader  # its workers stop
    row = dict(videos_per_step=videos, clips_per_step=2 * videos, workers=workers, steps_timed=n, warm_steps=warm,
               canvas=list(canvas), step_s=dt / n, clips_per_s=2 * videos * n / dt, data_wait=wait / dt)
    log(f"    loader: {workers} workers, {videos} videos/step: {row['clips_per_s']:.1f} clips/s, waiting for data "
        f"{row['data_wait']:.0%} of the time")
    return row


def bench_asrun(P, device, cache, log, batches=None, compiled_modes=None):
    """Per model: cvrl.train_step / lss.train_step as run (eager; also compiled on a GPU when the preset compiles),
    section 1's matching eager step at the same batch, and for CVRL the loader row. `batches`: {model name: clips}
    found by section 1 in this call (otherwise the preset's batch, or its asrun_batch on a GPU); halved where the
    step as run does not fit."""
    A = P["asrun"]
    gpu = device.type == "cuda"
    peak = peak_flops(device)
    modes = compiled_modes if compiled_modes is not None else [False, True] if P["compile"] and gpu else [False]
    canvas = asrun_canvas(A)
    workers = max(1, len(os.sched_getaffinity(0)) - 2)
    out = dict(peak_flops_bf16=peak, flop_rule=FLOP_RULE, canvas=list(canvas), models=[], loader=[],
               host="pinned host memory" if gpu else "ordinary host memory (a CPU run: nothing to pin for)")
    if gpu:
        torch.backends.cudnn.benchmark = True  # as cvrl.py does (lss.py leaves it off; its convolution is 2-D)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as training.start does
    for m in P["models"]:
        m = dict(m, canvas=canvas)
        cv = m["kind"] == "cvrl"
        batch, source = next((b, s) for b, s in ((m["batch"], "preset"), ((batches or {}).get(m["name"]),
                             "section 1's, found in this call"), (m.get("asrun_batch"), "preset (asrun_batch)")) if b)
        videos = max(1, batch // 2)
        macs, stem = fwd_macs(m), fwd_macs(m, stem=True)
        per_video = 2 * train_flops_per_clip(m, macs, stem)  # section 1's step: 2 clips per video
        asrun_per_video = per_video
        views = ""
        if not cv:  # the student also trains on the local views
            v = m["views"]
            lmacs = fwd_macs(m, frames=v["local_frames"], size=v["local_size"])
            lstem = fwd_macs(m, frames=v["local_frames"], size=v["local_size"], stem=True)
            asrun_per_video += v["local_views"] * (6 * lmacs - 2 * lstem)
            views = (f"2 global views {m['frames']}x{m['size']} (student and teacher) + {v['local_views']} local "
                     f"{v['local_frames']}x{v['local_size']} (student) per video")
        res = dict(name=m["name"], kind=m["kind"], batch_source=source, train_gflop_per_video=per_video / 1e9,
                   asrun_train_gflop_per_video=asrun_per_video / 1e9, views=views, rows=[], notes=[])
        log(f"  {m['name']}: {videos} videos/step ({asrun_per_video / 1e9:.3f} GFLOP per video as run)")
        specs = []
        for compiled in modes:
            specs.append(("as run", compiled))
            if not compiled:
                specs.append(("model only", False))
        live = []  # CPU: (row, step, keep, flops per video, raw step, cfg) waiting for round-robin windows
        keep_last = None  # the last step as run (the compiled one, if any): (raw step, cfg, keep, variant)

        def finish(row, times, flops):
            sec = statistics.median(times)
            b = row["videos_per_step"]
            row.update(step_s=sec, window_s=times, steps_per_s=1 / sec, videos_per_s=b / sec, clips_per_s=2 * b / sec,
                       tflops=flops * b / sec / 1e12, mfu=flops * b / sec / peak if peak else None,
                       peak_mem_gb=torch.cuda.max_memory_allocated(device) / 2 ** 30 if gpu else None)
            log(f"    {row['row']:<10} {row['variant']:<44} {row['clips_per_s']:8.2f} clips/s"
                + (f"  MFU {row['mfu']:.1%}" if row["mfu"] else "") + f"  (first step {row['first_step_s']:.1f} s)")

        for what, compiled in specs:
            asrun = what == "as run"
            if asrun:
                variant = ("cvrl" if cv else "lss") + ".train_step" + (", --compile" if compiled else "")
            else:
                variant = matching_variant(m["kind"], device, compiled)["name"]
            row = dict(row=what, variant=variant, compiled=compiled, notes=[])
            res["rows"].append(row)
            flops = asrun_per_video if asrun else per_video
            step = keep = raw = None
            while True:  # a GPU step that does not fit is retried at half the batch
                row["videos_per_step"] = videos
                if gpu:
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    torch.manual_seed(0)
                    if compiled:
                        from torch._dynamo.utils import counters
                        counters.clear()
                    if asrun:
                        raw, cfg, keep = (build_cvrl_asrun if cv else build_lss_asrun)(m, videos, device, compiled)
                        K = 2 if cv else 2 + cfg.local_views
                        host = torch.randint(0, 256, (videos, K, m["frames"], *canvas, 3), dtype=torch.uint8,
                                             generator=torch.Generator().manual_seed(0))  # (B, K, T, H, W, 3)
                        if gpu:
                            host = host.pin_memory()
                        keep, count = (keep, host), [0]

                        def host_step(raw=raw, host=host, count=count):
                            raw(host.to(device, non_blocking=True), count[0])  # the batch crosses, as in the loop
                            count[0] += 1
                        step = host_step
                    else:
                        step, keep = (build_cvrl_step if cv else build_lss_step)(
                            m, 2 * videos, device, matching_variant(m["kind"], device, compiled))
                    t0 = time.perf_counter()
                    step()  # first call: compiles, autotunes, allocates
                    sync(device)
                    row["first_step_s"] = time.perf_counter() - t0
                    break
                except torch.cuda.OutOfMemoryError:
                    step = keep = raw = None
                    _free(device)
                    if videos == 1:
                        row["error"] = "OutOfMemoryError at 1 video per step"
                        break
                    res["notes"].append(f"{what} ({variant}) did not fit at {videos} videos per step: halved")
                    videos //= 2
                except Exception as e:  # noqa: BLE001 -- one failing row (no compiler) must not stop the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    log(f"    {variant}: {row['error']}")
                    break
            if "error" in row:
                continue
            if asrun:
                row["notes"].append(f"fed from a uint8 batch in {out['host']}, copied to the device every step")
                if compiled:
                    row.update(graph_breaks())
                    row["notes"].append(f"{row['graph_breaks']} graph break(s), {row['graphs']} graph(s)"
                                        + (": " + "; ".join(row["graph_break_reasons"]) if row["graph_breaks"] else ""))
                    row["notes"].append("compiled: the encoder (as cvrl.py --compile)" if cv else
                                        "compiled: student and teacher (as lss.py --compile)")
                else:
                    row["notes"].append("not compiled")
                if not cv:
                    row["notes"].append(f"{views}; clips/s counts the 2 global clips of a video, MFU the local views "
                                        f"too; concept vectors: random unit vectors ({m['concepts']} categories and "
                                        f"their descriptions; no text-tower weights can be downloaded)")
            else:
                row["notes"].append("section 1's step: float clips already on the device")
            if not gpu:
                for _ in range(P["warmup"]):
                    step()
                live.append((row, step, keep, flops, raw, cfg if asrun else None))
                continue
            try:
                finish(row, time_steps(step, device, P["warmup"], P["windows"], P["per_window"])[1], flops)
            except Exception as e:  # noqa: BLE001 -- e.g. out of memory in a later step: recorded, the rest go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                log(f"    {variant}: {row['error']}")
            if asrun and "error" not in row:
                keep_last = (raw, cfg, keep, variant)  # the loader row runs the last step as run
            step = keep = raw = None  # noqa: F841
            _free(device)
        if live:  # CPU: windows round-robin over the rows, so load drifts on a shared machine hit every row alike
            times = [[] for _ in live]
            for _ in range(P["windows"]):
                for i, (row, step, *_) in enumerate(live):
                    times[i].append(time_steps(step, device, 0, 1, P["per_window"])[0])
            for (row, _, _, flops, _, _), t in zip(live, times):
                finish(row, t, flops)
            last = [x for x in live if x[0]["row"] == "as run"]
            keep_last = (last[-1][4], last[-1][5], last[-1][2], last[-1][0]["variant"]) if last else None
            live = None
        res["videos_per_step"] = videos
        if cv and A.get("loader") and keep_last is not None:
            raw, cfg, _, variant = keep_last
            try:
                r = loader_row(raw, cfg, videos, asrun_videos(A, cache, log), canvas, device, workers, A, log)
                r.update(name=m["name"], step=variant,
                         format=f"H.264 {canvas[1]}x{canvas[0]}, a keyframe every 16 frames, x264 tune fastdecode, "
                                f"CRF 23 (`reencode.reencode_video`'s defaults, from a {A['source'][0]}x"
                                f"{A['source'][1]} camera-like source)")
                out["loader"].append(r)
            except Exception as e:  # noqa: BLE001 -- reported in the row, as the other rows' errors
                out["loader"].append(dict(name=m["name"], error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
                log(f"    loader: {out['loader'][-1]['error']}")
        keep_last = None
        if any(modes):
            torch._dynamo.reset()
        _free(device)
        out["models"].append(res)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 2. input pipeline
# ----------------------------------------------------------------------------------------------------------------------

def textured_video(seed, w, h, frames):
    """Camera-like content: a multi-scale random texture panned along a smooth path, a bright shape moving across
    it, and a little per-frame sensor noise (which sets the residual bitrate). uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    H2, W2 = h + h // 2, w + w // 2
    tex = np.zeros((3, H2, W2), np.float32)
    for cells, amp in ((4, 0.45), (16, 0.25), (64, 0.15), (H2 // 2, 0.3)):
        g = torch.from_numpy(rng.random((1, 3, cells, max(2, cells * W2 // H2)), dtype=np.float32))
        tex += amp * F.interpolate(g, size=(H2, W2), mode="bicubic", align_corners=False)[0].numpy()
    tex = np.clip(tex * 255, 0, 255).transpose(1, 2, 0)
    t = np.arange(frames) / max(1, frames - 1)
    ox = ((np.sin(2 * np.pi * (0.3 * t + rng.random())) + 1) / 2 * (W2 - w)).astype(int)
    oy = ((np.cos(2 * np.pi * (0.2 * t + rng.random())) + 1) / 2 * (H2 - h)).astype(int)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((frames, h, w, 3), np.uint8)
    r = min(w, h) / 8
    for i in range(frames):
        f = tex[oy[i]:oy[i] + h, ox[i]:ox[i] + w].copy()
        cx, cy = w * (0.1 + 0.8 * t[i]), h * (0.5 + 0.3 * np.sin(4 * np.pi * t[i]))
        f[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (230, 200, 60)
        f += rng.normal(0, 8.0, f.shape).astype(np.float32)  # ~0.8 Mb/s at 340x256, CRF 23: perf.md §4b's files
        out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out


def make_videos(P, cache: Path, log):
    """Encode (once; cached under a versioned name) P['n_videos'] videos per format. Returns {format name: [paths]} and file stats."""
    out, info = {}, {}
    for fmt in P["formats"]:
        paths = []
        for i in range(P["n_videos"]):
            tune = f"-{fmt.tune}" if fmt.tune else ""
            tag = f"v2-{fmt.codec}{tune}-{fmt.width}x{fmt.height}-{fmt.fps}fps-g{fmt.gop or 'def'}-{P['seconds']}s-{i}{fmt.ext}"
            p = cache / tag
            if not p.exists():
                frames = textured_video(1000 + i, fmt.width, fmt.height, int(P["seconds"] * fmt.fps))
                opts = {"threads": "1"}
                if fmt.codec == "libx264":
                    opts["crf"] = "23"
                else:
                    opts["b"] = "500000"  # UCF101's XviD files run at a few hundred kb/s
                if fmt.gop:
                    opts["g"] = str(fmt.gop)
                if fmt.tune:
                    opts["tune"] = fmt.tune
                tmp = p.with_name(p.name + ".tmp" + fmt.ext)
                data.write_video(tmp, frames, fmt.fps, fmt.codec, opts)
                os.replace(tmp, p)
            paths.append(str(p))
        with av.open(paths[0]) as c:
            s = c.streams.video[0]
            keys = [i for i, pk in enumerate(c.demux(s)) if pk.size and pk.is_keyframe]
        gaps = np.diff(keys) if len(keys) > 1 else np.array([data.probe(paths[0]).num_frames])
        kbps = os.path.getsize(paths[0]) * 8 / P["seconds"] / 1e3
        info[fmt.name] = dict(paths=paths, kbps=round(kbps), keyframes=len(keys), max_key_gap=int(gaps.max()),
                              frames=data.probe(paths[0]).num_frames, note=fmt.note)
        out[fmt.name] = paths
        log(f"  {fmt.name}: {len(keys)} keyframes, {kbps:.0f} kb/s")
    return out, info


def _read_clips(path, sampler, rng, canvas, acc):
    stats = {}
    t0 = time.perf_counter()
    data.read_clips(path, sampler, rng, canvas, stats=stats)
    acc["t"] += time.perf_counter() - t0
    acc["n"] += 1
    acc["decoded"] += stats.get("decoded", 0)
    acc["seeks"] += stats.get("seeks", 0)


def _whole_video_pair(path, sampler, rng, acc):
    """The baseline a first implementation writes: decode the whole video sequentially (rgb24, one thread) and
    slice the two clips out of the list."""
    t0 = time.perf_counter()
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        allf = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    a, b = sampler(len(allf), 1.0, rng)
    _ = np.stack([allf[j] for j in a]), np.stack([allf[j] for j in b])
    acc["t"] += time.perf_counter() - t0
    acc["n"] += 1
    acc["decoded"] += len(allf)


def decode_rates(P, videos):
    """In-process, one thread (what one DataLoader worker does), for every format: random clips through
    read_clips; CVRL pairs through read_clips; the same pairs by whole-video decode. Rounds go over all formats in
    turn (and pair/whole-video alternate video by video), so load drifts on a shared machine hit every row alike;
    every format gets the same random clip starts (same seeds, same frame count)."""
    frames, stride = P["clip"]
    rounds = max(1, min(P.get("rounds", 3), P["decode_clips"], P["pair_reps"]))
    zero = lambda: dict(t=0.0, n=0, decoded=0, seeks=0)  # noqa: E731
    acc = {f.name: dict(clip=zero(), pair=zero(), whole=zero()) for f in P["formats"]}
    for f in P["formats"]:  # warm the page cache and the libraries
        data.read_clips(videos[f.name][0], data.RandomClip(frames, stride), np.random.default_rng(0),
                        (f.height, f.width))
    for r in range(rounds):
        for f in P["formats"]:
            paths, canvas, a = videos[f.name], (f.height, f.width), acc[f.name]
            rng = np.random.default_rng([r, 0])
            for i in range(P["decode_clips"] // rounds):
                _read_clips(paths[i % len(paths)], data.RandomClip(frames, stride), rng, canvas, a["clip"])
            pair = cvrl.PairSampler(frames, stride, "decreasing", 1.0)
            rng_p, rng_w = np.random.default_rng([r, 1]), np.random.default_rng([r, 1])  # the same pairs
            for i in range(P["pair_reps"] // rounds):
                _read_clips(paths[i % len(paths)], pair, rng_p, canvas, a["pair"])
                _whole_video_pair(paths[i % len(paths)], pair, rng_w, a["whole"])
    return acc


def loader_rate(paths, sampler, canvas, batch, workers, batches, crop, device, augment=True):
    """clips/s delivered by data.make_loader (decode in `workers` processes), copied to `device` and, with
    `augment`, through data.augment there; steady state: the first `workers` batches (worker start-up, prefetch)
    are not timed."""
    reps = -(-(workers + batches + 1) * batch // len(paths))  # enough items for every batch drawn below
    videos = data.VideoList(paths * reps, [0] * len(paths) * reps, ["x"])
    ds = data.VideoDataset(videos, sampler, canvas=canvas)
    loader = data.make_loader(ds, batch, workers, shuffle=True, seed=0)
    g = torch.Generator().manual_seed(0)
    it = iter(loader)
    n_clips, t0 = 0, None
    try:
        for i in range(workers + batches):
            if i == workers:
                sync(device)
                t0 = time.perf_counter()
            b = next(it)
            v = b["video"].to(device, non_blocking=True)        # (B, K, T, H, W, 3)
            x = v = v.flatten(0, 1)
            if augment:
                x = data.augment(data.to_bcthw(v), crop, data.AugmentConfig(), g)
            if i >= workers:
                n_clips += x.shape[0]
        sync(device)
        dt = time.perf_counter() - t0
    finally:
        del it
        del loader
    return dict(clips_per_s=n_clips / dt, batch=batch, workers=workers)


def data_wait(paths, P, device, workers, log):
    """A CVRL training loop as cvrl.py runs it (loader -> two augmentations -> encoder + head -> NT-Xent -> SGD),
    timing the wait for the next batch against the step. The step synchronises (cvrl.py reads loss.item())."""
    arch = P["wait_model"]
    frames, stride = P["clip"]
    enc = cvrl.build_encoder(arch)
    model = nn.Sequential(enc, cvrl.ProjectionHead(enc.feature_dim, 2048 if arch == "r3d50" else 512, 128, 3))
    model = model.to(device)
    gpu = device.type == "cuda"
    if gpu:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = cvrl.configure_optimizer(model, 0.1)
    aug1, aug2 = cvrl.augment_configs(cvrl.Config(frames=frames, stride=stride))
    videos = data.VideoList(paths * 256, [0] * len(paths) * 256, ["x"])
    probe = data.probe(paths[0])
    ds = data.VideoDataset(videos, cvrl.PairSampler(frames, stride, "decreasing", 1.0),
                           canvas=(probe.height, probe.width), min_frames=frames)
    loader = data.make_loader(ds, P["wait_batch"], workers, shuffle=True, seed=0)
    it = iter(loader)
    g = torch.Generator().manual_seed(0)
    wait = busy = aug = 0.0
    warm = 2
    try:
        t_ready = time.perf_counter()
        for step in range(warm + P["wait_steps"]):
            batch = next(it)
            t_batch = time.perf_counter()
            video = batch["video"].to(device, non_blocking=True)
            x1 = data.augment(data.to_bcthw(video[:, 0]), P["wait_crop"], aug1, g)
            x2 = data.augment(data.to_bcthw(video[:, 1]), P["wait_crop"], aug2, g)
            x = torch.cat([x1, x2])
            if gpu:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            sync(device)
            t_aug = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                z = model(x)
                loss = cvrl.nt_xent(z[:x1.shape[0]], z[x1.shape[0]:], 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            t_done = time.perf_counter()
            if step >= warm:
                wait += t_batch - t_ready
                busy += t_done - t_batch
                aug += t_aug - t_batch
            t_ready = t_done
    finally:
        del it
        del loader
    n = P["wait_steps"]
    return dict(model=arch + (" bf16 channels_last_3d" if gpu else " fp32"), batch_videos=P["wait_batch"],
                clips_per_step=2 * P["wait_batch"], crop=P["wait_crop"], workers=workers, steps=n,
                data_wait=wait / (wait + busy), step_s=(wait + busy) / n, compute_s=busy / n, augment_s=aug / n,
                clips_per_s=2 * P["wait_batch"] * n / (wait + busy))


def bench_pipeline(P, device, workers, cache, log):
    videos, info = make_videos(P, cache, log)
    frames, stride = P["clip"]
    res = dict(clip=f"{frames} frames, stride {stride}", crop=P["crop"], device=str(device), workers_max=workers,
               loader_batch=P["loader_batch"],
               formats=[], pairs=[], data_wait=[])
    acc = decode_rates(P, videos)
    for fmt in P["formats"]:
        paths = videos[fmt.name]
        canvas = (fmt.height, fmt.width)
        row = dict(format=fmt.name, **{k: v for k, v in info[fmt.name].items() if k != "paths"})
        c, pr, wh = acc[fmt.name]["clip"], acc[fmt.name]["pair"], acc[fmt.name]["whole"]
        row.update(decode_clips_per_s_1core=c["n"] / c["t"], frames_decoded_per_clip=c["decoded"] / c["n"],
                   clips_timed=c["n"])
        for w in sorted({1, workers}):  # decode only: what the workers deliver
            r = loader_rate(paths, data.RandomClip(frames, stride), canvas, P["loader_batch"], w, P["loader_batches"],
                            P["crop"], device, augment=False)
            row[f"loader_clips_per_s_w{w}"] = r["clips_per_s"]
        r = loader_rate(paths, data.RandomClip(frames, stride), canvas, P["loader_batch"], workers,
                        P["loader_batches"], P["crop"], device, augment=True)
        row["loader_aug_clips_per_s"] = r["clips_per_s"]
        log(f"  {fmt.name}: {row['decode_clips_per_s_1core']:.1f} clips/s/core decode "
            f"({row['frames_decoded_per_clip']:.0f} frames/clip); loader "
            + ", ".join(f"{w} workers {row[f'loader_clips_per_s_w{w}']:.1f}" for w in sorted({1, workers}))
            + f" clips/s; + augmentation on {device}: {row['loader_aug_clips_per_s']:.1f}")
        res["formats"].append(row)
        pair_rate, whole_rate = pr["n"] / pr["t"], wh["n"] / wh["t"]
        res["pairs"].append(dict(format=fmt.name, pair_videos_per_s=pair_rate, pair_frames_decoded=pr["decoded"] / pr["n"],
                                 pair_seeks=pr["seeks"] / pr["n"], naive_videos_per_s=whole_rate,
                                 naive_frames_decoded=wh["decoded"] / wh["n"], speedup=pair_rate / whole_rate,
                                 videos_timed=pr["n"]))
        log(f"    CVRL pair: {pair_rate:.1f} videos/s ({pr['decoded'] / pr['n']:.0f} frames) vs whole-video decode "
            f"{whole_rate:.1f} ({wh['decoded'] / wh['n']:.0f} frames): x{pair_rate / whole_rate:.2f}")
    h264 = [f for f in P["formats"] if f.codec == "libx264"]
    # data-wait on the Kinetics-like format at both keyframe spacings (the largest frame size in the preset)
    big = max(h264, key=lambda f: f.width * f.height) if h264 else None
    chosen = [f for f in h264 if (f.width, f.height) == (big.width, big.height)][:P["wait_formats"]] if h264 else []
    for fmt in chosen:
        r = data_wait(videos[fmt.name], P, device, workers, log)
        r["format"] = fmt.name
        res["data_wait"].append(r)
        log(f"  data wait, {r['model']} on {fmt.name}, {workers} workers: {r['data_wait']:.0%} of the step "
            f"({r['clips_per_s']:.1f} clips/s); augmentation {r['augment_s'] / r['step_s']:.0%}, model "
            f"{(r['compute_s'] - r['augment_s']) / r['step_s']:.0%}")
    return res


# ----------------------------------------------------------------------------------------------------------------------
# 3. augmentation
# ----------------------------------------------------------------------------------------------------------------------

def torchvision_loop(video, size, cfg=None):
    """Per-clip torchvision.transforms.v2: each clip as a (T, C, H, W) tensor, so one draw of parameters is shared
    by its frames. The same ops as data.AugmentConfig()'s defaults, and cfg's blur and solarize when it has them
    (Gaussian blur of data.augment's kernel size, size // 10 rounded to odd; solarize at 0.5 on [0, 1] values)."""
    from torchvision.transforms import v2
    cfg = cfg or data.AugmentConfig()
    ops = [v2.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(0.5, 2.0), antialias=True),
           v2.RandomHorizontalFlip(0.5),
           v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
           v2.RandomGrayscale(0.2),
           v2.ToDtype(torch.float32, scale=True)]
    if cfg.blur_p:
        ops.append(v2.RandomApply([v2.GaussianBlur(2 * max(1, (size // 10) // 2) + 1, cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p:
        ops.append(v2.RandomSolarize(0.5, p=cfg.solarize_p))
    tf = v2.Compose(ops)
    out = [tf(clip.transpose(0, 1)).transpose(0, 1) for clip in video]  # (C, T, H, W) -> (T, C, H, W) and back
    return torch.stack(out)  # (B, C, T, size, size)


# The augmentations timed: SimCLR's colour ops alone (data.AugmentConfig()), and what cvrl.py runs: each video's two
# clips get the two views' configs (cvrl.augment_configs: view 1 blur p=1; view 2 blur p=0.1, solarize p=0.2).
AUGMENT_OPS = {"crop, flip, jitter, grayscale": (data.AugmentConfig(), data.AugmentConfig()),
               "cvrl.py's two views (+ blur, solarize)": (
                   data.AugmentConfig(blur_p=1.0), data.AugmentConfig(blur_p=0.1, solarize_p=0.2))}


def bench_augment(P, devices, log):
    a = P["augment"]
    res = dict(batch=f"uint8 ({a['B']}, 3, {a['T']}, {a['H']}, {a['W']}) -> {a['size']}x{a['size']}", rows=[])
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (a["B"], 3, a["T"], a["H"], a["W"]), dtype=torch.uint8, generator=gen)
    half = a["B"] // 2  # the first half of the clips gets view 1's config, the rest view 2's (as a CVRL batch)
    for dev in devices:
        video = base.to(dev)
        for ops, (c1, c2) in AUGMENT_OPS.items():
            g = torch.Generator().manual_seed(0)
            ours, _ = time_steps(lambda: (data.augment(video[:half], a["size"], c1, g),
                                          data.augment(video[half:], a["size"], c2, g)), dev, 1, a["windows"], 1)
            theirs, _ = time_steps(lambda: (torchvision_loop(video[:half], a["size"], c1),
                                            torchvision_loop(video[half:], a["size"], c2)), dev, 1, a["windows"], 1)
            row = dict(device=str(dev), ops=ops, augment_s=ours, torchvision_s=theirs,
                       augment_clips_per_s=a["B"] / ours, torchvision_clips_per_s=a["B"] / theirs,
                       speedup=theirs / ours)
            res["rows"].append(row)
            log(f"  {dev}, {ops}: data.augment {ours * 1e3:.0f} ms/batch ({row['augment_clips_per_s']:.1f} clips/s), "
                f"torchvision per clip {theirs * 1e3:.0f} ms ({row['torchvision_clips_per_s']:.1f} clips/s): "
                f"x{row['speedup']:.1f}")
    return res


# ----------------------------------------------------------------------------------------------------------------------
# 4. re-encode formats
# ----------------------------------------------------------------------------------------------------------------------
# Which format should `python scripts/reencode.py` write? One camera-like source (larger than 256 on its short side, so
# the resize matters), re-encoded by reencode.reencode_video in each variant, then read the way training reads it: random
# clips and CVRL pairs through read_clips, one process, one thread, canvas = the file's own size (the augmentation
# crops later). The target is the loader of a 16-core GPU box: 720 clips/s of 16x224 CVRL clips, 45 clips/s per core.

def _sequential_rgb(path, size=None):
    """Every frame, decoded in order (one thread) -> list of uint8 (H, W, 3); scaled to size=(W, H) with the area
    filter that reencode_video uses, when given."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        if size is None:
            return [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return [f.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA") for f in c.decode(s)]


def _psnr(a, b):
    mse = np.mean([np.mean((x.astype(np.float32) - y.astype(np.float32)) ** 2) for x, y in zip(a, b)])
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-10)))


def nvdec_rate(path, log):
    """GPU decoding through PyAV's hardware acceleration (NVDEC via FFmpeg's CUDA hwaccel): one sequential decode of
    the whole file, frames downloaded to host memory and converted to RGB there (what a DataLoader worker would hand
    on). Reports wall frames/s and CPU seconds per frame (process time: the download and the conversion), because on
    a GPU box the cores are the scarce resource. read_clips has no hwaccel path, so this is a sequential decode, not
    random clips: an upper bound for the decode, not a loader measurement."""
    from av.codec.hwaccel import HWAccel
    try:
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        with av.open(str(path), hwaccel=HWAccel("cuda", allow_software_fallback=False)) as c:
            s = c.streams.video[0]
            for f in c.decode(s):
                f.to_ndarray(format="rgb24")
                n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return dict(frames=n, frames_per_s=n / wall, cpu_ms_per_frame=cpu / n * 1e3)
    except Exception as e:  # noqa: BLE001 -- no NVDEC, a driver without it, a build without CUDA: say which
        log(f"    NVDEC decode failed: {type(e).__name__}: {e}")
        return dict(error=f"{type(e).__name__}: {e}")


def bench_reencode(P, cache, log, device=None):
    R = P["reencode"]
    frames, stride = P["clip"]
    W, H, fps, secs = R["source"]
    src = cache / f"reencode-src-v1-{W}x{H}-{fps}fps-{secs}s.mp4"
    if not src.exists():  # x264's default keyframe interval, as a camera or a download would have
        tmp = src.with_name(src.name + ".tmp.mp4")
        data.write_video(tmp, textured_video(2000, W, H, int(secs * fps)), fps, "libx264",
                         {"crf": "23", "threads": "1"})
        os.replace(tmp, src)
    src_frames = _sequential_rgb(src)
    res = dict(source=f"H.264 {W}x{H}, {fps} fps, {secs} s, x264 default keyframe interval",
               source_bytes=os.path.getsize(src), clip=f"{frames} frames, stride {stride}", variants=[])
    out = cache / "reencode-out"
    out.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as c:  # the first row: the video as it came, the baseline every variant is read against
        keys = [i for i, pk in enumerate(c.demux(c.streams.video[0])) if pk.size and pk.is_keyframe]
    size = os.path.getsize(src)
    rows = [dict(variant="as filmed: the source, not re-encoded", note="", source=True, codec="h264", width=W,
                 height=H, bytes=size, mb_per_min=size / secs * 60 / 1e6, kbps=size * 8 / secs / 1e3,
                 max_key_gap=int(max(np.diff(keys + [len(src_frames)]))), keyframes=len(keys), encode_s=0.0,
                 exact=True, psnr_db=None)]
    paths = [str(src)]
    for v in P["reencode_variants"]:
        path = out / (v.name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "") + v.ext)
        t0 = time.perf_counter()  # always re-encoded: the encode time is a row too, and stale files are never read
        r = reencode.reencode_video(src, path, v.short_side or None, v.gop, v.crf, "medium", codec=v.codec,
                                tune=v.tune, qscale=v.qscale)
        enc_s = time.perf_counter() - t0
        size = os.path.getsize(path)
        with av.open(str(path)) as c:
            keys = [i for i, pk in enumerate(c.demux(c.streams.video[0])) if pk.size and pk.is_keyframe]
            codec_name = c.streams.video[0].codec_context.name
        # exactness: read_frames (seek + decode forward) against a sequential decode of the same file
        seq = _sequential_rgb(path)
        probe = [0, 1, len(seq) // 3, len(seq) // 2 + 1, len(seq) - 1]
        exact = len(seq) == r["frames"] == len(src_frames) and all(
            np.array_equal(a, seq[j]) for a, j in zip(data.read_frames(path, probe).numpy(), probe))
        ref = src_frames if (r["width"], r["height"]) == (W, H) else \
            _sequential_rgb(src, (r["width"], r["height"]))  # the source scaled as reencode_video scales it
        row = dict(variant=v.name, note=v.note, codec=codec_name, width=r["width"], height=r["height"],
                   bytes=size, mb_per_min=size / secs * 60 / 1e6, kbps=size * 8 / secs / 1e3,
                   max_key_gap=int(max(np.diff(keys + [r["frames"]]))), keyframes=len(keys), encode_s=enc_s,
                   exact=bool(exact), psnr_db=_psnr(seq, ref))
        rows.append(row)
        paths.append(str(path))
        log(f"  {v.name}: {size / 1e6:.2f} MB ({row['mb_per_min']:.1f} MB/min), {r['width']}x{r['height']}, "
            f"keyframe gap {row['max_key_gap']}, PSNR {row['psnr_db']:.1f} dB, exact {exact}, encoded in {enc_s:.1f} s")
        if not exact:  # recorded and rendered as "no" (the tests require yes); the other variants still run
            log(f"  WARNING {v.name}: read_frames differs from a sequential decode of {path}")
    del src_frames
    # decode rates: rounds go over every variant in turn (load drifts on a shared machine hit every row alike); the
    # same seeds in every variant, so every row reads the same clip starts; the median of the per-round rates
    clip_r, pair_r = [[] for _ in rows], [[] for _ in rows]
    dec, pair_dec = [0] * len(rows), [0] * len(rows)
    for p in paths:  # warm the page cache and the libraries
        data.read_clips(p, data.RandomClip(frames, stride), np.random.default_rng(0), None)
    for rnd in range(R["rounds"]):
        for i, (p, row) in enumerate(zip(paths, rows)):
            canvas, st = (row["height"], row["width"]), {}
            rng = np.random.default_rng([rnd, 0])
            t0 = time.perf_counter()
            for _ in range(R["clips"]):
                data.read_clips(p, data.RandomClip(frames, stride), rng, canvas, stats=st)
            clip_r[i].append(R["clips"] / (time.perf_counter() - t0))
            dec[i] += st["decoded"]
            rng, st = np.random.default_rng([rnd, 1]), {}
            pair = cvrl.PairSampler(frames, stride, "decreasing", 1.0)
            t0 = time.perf_counter()
            for _ in range(R["pairs"]):
                data.read_clips(p, pair, rng, canvas, min_frames=frames, stats=st)
            pair_r[i].append(R["pairs"] / (time.perf_counter() - t0))
            pair_dec[i] += st["decoded"]
    for i, row in enumerate(rows):
        row.update(clips_per_s_1core=statistics.median(clip_r[i]), clip_rounds=[round(x, 1) for x in clip_r[i]],
                   frames_decoded_per_clip=dec[i] / (R["rounds"] * R["clips"]),
                   pairs_per_s_1core=statistics.median(pair_r[i]),
                   frames_decoded_per_pair=pair_dec[i] / (R["rounds"] * R["pairs"]))
        row["cores_for_720"] = 720 / row["clips_per_s_1core"]
        log(f"  {row['variant']}: {row['clips_per_s_1core']:.1f} clips/s/core ({row['frames_decoded_per_clip']:.0f} "
            f"frames/clip), {row['pairs_per_s_1core']:.1f} CVRL pairs/s/core ({row['frames_decoded_per_pair']:.0f} "
            f"frames/pair)")
    res["variants"] = rows
    res["rounds"], res["clips_per_round"], res["pairs_per_round"] = R["rounds"], R["clips"], R["pairs"]
    if device is not None and device.type == "cuda":  # the GPU decoder (FFmpeg's NVDEC hwaccels: H.264, MPEG-4, JPEG)
        res["nvdec"] = []
        for p, row in zip(paths, rows):
            r = nvdec_rate(p, log)
            if "error" not in r:
                r["cpu_clips_per_s_1core"] = 1e3 / (r["cpu_ms_per_frame"] * row["frames_decoded_per_clip"])
                log(f"    NVDEC {row['variant']}: {r['frames_per_s']:.0f} frames/s, {r['cpu_ms_per_frame']:.2f} "
                    f"CPU ms/frame")
            res["nvdec"].append(dict(variant=row["variant"], **r))
    return res


def render_reencode(p, env, lines):
    lines += ["### 4. Re-encode formats (`python scripts/reencode.py`)", ""] + _provenance(p, env) + [
              f"Source: {p['source']} ({p['source_bytes'] / 1e6:.1f} MB), re-encoded by reencode.reencode_video in each "
              f"variant. Decode = read_clips in one process, one thread (one DataLoader worker), canvas = the file's "
              f"own size; clip = {p['clip']} (data.RandomClip), CVRL pair = cvrl.PairSampler(decreasing) through "
              f"read_clips; median of {p['rounds']} rounds over all variants in turn ({p['clips_per_round']} clips, "
              f"{p['pairs_per_round']} pairs per round). PSNR: every decoded frame against the source scaled to the "
              "same size with the same filter. *exact*: read_frames equals a sequential decode of the file. "
              "*cores for 720 clips/s*: the 16-core target of issue 19 (45 clips/s per core).", "",
              "| variant | size | MB per min of video | kb/s | keyframe gap | PSNR | encode s | exact | "
              "clips/s/core | frames decoded/clip | CVRL pairs/s/core | frames decoded/pair | cores for 720 clips/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in p["variants"]:
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['variant']}{note} | {r['width']}x{r['height']} | "
                     f"{r['mb_per_min']:.1f} | {r['kbps']:.0f} | {r['max_key_gap']} | "
                     f"{'source' if r['psnr_db'] is None else format(r['psnr_db'], '.1f') + ' dB'} | "
                     f"{r['encode_s']:.1f} | {'yes' if r['exact'] else '**no**'} | **{r['clips_per_s_1core']:.1f}** | "
                     f"{r['frames_decoded_per_clip']:.0f} | {r['pairs_per_s_1core']:.1f} | "
                     f"{r['frames_decoded_per_pair']:.0f} | {r['cores_for_720']:.0f} |")
    lines.append("")
    if p.get("nvdec"):
        lines += ["GPU decoding (NVDEC through PyAV's hwaccel, whole file in order, frames downloaded and converted "
                  "to RGB on the CPU; read_clips has no hwaccel path, so no random clips): CPU cost per frame and "
                  "the clips/s per core it implies at the row's frames decoded per clip.", "",
                  "| variant | frames/s | CPU ms per frame | implied clips/s per CPU core |", "|---|---|---|---|"]
        for r in p["nvdec"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | error: {r['error']} | | |")
            else:
                lines.append(f"| {r['variant']} | {r['frames_per_s']:.0f} | {r['cpu_ms_per_frame']:.2f} | "
                             f"{r['cpu_clips_per_s_1core']:.1f} |")
        lines.append("")


# ----------------------------------------------------------------------------------------------------------------------
# 5. decoders: ours against the libraries a user would pick instead, and against the limit
# ----------------------------------------------------------------------------------------------------------------------

def _peer_decoders():
    """{name: (version, read(path, indices) -> uint8 (T, H, W, 3))} for the peers installed here. Each is called
    as its documentation suggests for random access, one thread, a fresh decoder per clip (as a DataLoader worker
    would use it). None is a dependency of the project: a peer that is not installed is reported as such."""
    peers = {}
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder

        def torchcodec_read(path, idx):  # approximate: no scan of the whole file at open (torchcodec's advice, #715)
            d = VideoDecoder(path, seek_mode="approximate", num_ffmpeg_threads=1, dimension_order="NHWC")
            return d.get_frames_at([int(i) for i in idx]).data.numpy()
        peers["torchcodec"] = (torchcodec.__version__, torchcodec_read)
    except Exception:  # noqa: BLE001 -- not installed, or its FFmpeg libraries are missing
        pass
    try:
        import decord

        def decord_read(path, idx):
            return decord.VideoReader(path, num_threads=1).get_batch([int(i) for i in idx]).asnumpy()
        peers["decord"] = (decord.__version__, decord_read)
    except Exception:  # noqa: BLE001
        pass
    try:
        import cv2
        cv2.setNumThreads(1)

        def opencv_read(path, idx):  # set the position, read on; a new seek only for a jump back or a long gap
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
            got, pos = {}, None
            for i in sorted({int(i) for i in idx}):
                if pos is None or i - pos > 32:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                    pos = i
                while pos <= i:
                    ok, f = cap.read()
                    if not ok:
                        raise RuntimeError(f"OpenCV could not read frame {pos} of {path}")
                    if pos == i:
                        got[i] = f[..., ::-1]  # BGR -> RGB
                    pos += 1
            cap.release()
            return np.stack([got[int(i)] for i in idx])
        peers["OpenCV"] = (cv2.__version__, opencv_read)
    except Exception:  # noqa: BLE001
        pass

    def whole_video_read(path, idx):  # the first implementation everyone writes: decode it all, keep what is asked
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_count = 1
            allf = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return np.stack([allf[int(i)] for i in idx])
    peers["whole-video PyAV"] = (av.__version__, whole_video_read)
    return peers


class _Limit:
    """The FFmpeg limit for reading given frames of one file: the container opened once (opening is not counted),
    the true keyframes known (a packet scan, not counted), then per read: a seek to the keyframe before the first
    wanted frame (and another only where jumping to a later keyframe skips more than 4 frames), decode from that
    keyframe up to the last wanted frame, and convert
    only the wanted frames to RGB (swscale, one thread) into one preallocated array. The same libavcodec and
    libswscale as read_frames, through PyAV; nothing is done per frame beyond FFmpeg's own work and a counter.
    A reader can only beat it by decoding fewer frames (skipping frames no wanted frame depends on)."""

    def __init__(self, path):
        self.c = av.open(path)
        self.s = self.c.streams.video[0]
        self.s.thread_count = 1
        first = next(self.c.decode(self.s))
        self.start, self.tb, self.fps = first.pts, self.s.time_base, float(self.s.average_rate)
        self.c.seek(0)
        key_pts = sorted(p.pts for p in self.c.demux(self.s) if p.size and p.is_keyframe and p.pts is not None)
        self.key_pts = key_pts
        self.keys = [round(float((p - self.start) * self.tb) * self.fps) for p in key_pts]
        self.reformatter = VideoReformatter()
        self.decoded = 0

    def read(self, idx):
        rows: dict[int, list[int]] = {}
        for r, i in enumerate(int(i) for i in idx):
            rows.setdefault(i, []).append(r)
        wanted = sorted(rows)
        out = None
        j = 0
        while j < len(wanted):
            k = max(0, bisect_right(self.keys, wanted[j]) - 1)  # the keyframe at or before the first wanted frame
            run = [wanted[j]]
            for i in wanted[j + 1:]:  # decode through unless seeking to a later keyframe skips more than 4 frames
                if self.keys[max(0, bisect_right(self.keys, i) - 1)] > run[-1] + 4:
                    break
                run.append(i)
            self.c.seek(self.key_pts[k], stream=self.s, backward=True)
            want = {self.start + round(i / self.fps / float(self.tb)): i for i in run}
            last = max(want)
            for f in self.c.decode(self.s):
                self.decoded += 1
                i = want.get(f.pts)
                if i is not None:
                    img = self.reformatter.reformat(f, format="rgb24", threads=1).to_ndarray()
                    if out is None:
                        out = np.empty((len(idx), *img.shape), np.uint8)  # (T, H, W, 3)
                    for r in rows[i]:
                        out[r] = img
                if f.pts >= last:
                    break
            j += len(run)
        return out

    def close(self):
        self.c.close()


def bench_decoders(P, cache, log):
    """Random 16x2 clips and CVRL pairs from every format, read by data.read_clips (ours), each installed peer and
    the limit, one process, one thread. Every reader gets the same clips; clip by clip the readers take turns, so
    load drifts on a shared machine hit them alike; the best of `rounds` rounds is kept (the least disturbed).
    Each peer's first clip is compared with a sequential decode (*exact*)."""
    D = P["decoders"]
    frames, stride = P["clip"]
    videos, info = make_videos(P, cache, log)
    peers = _peer_decoders()
    res = dict(clip=f"{frames} frames, stride {stride}", rounds=D["rounds"], clips=D["clips"], pairs=D["pairs"],
               peers={k: v[0] for k, v in peers.items()}, formats=[])
    log("  peers: " + ", ".join(f"{k} {v[0]}" for k, v in peers.items()))
    for fmt in P["formats"]:
        path = videos[fmt.name][0]
        n = data.probe(path).num_frames
        rng = np.random.default_rng(0)
        singles = [data.RandomClip(frames, stride)(n, 30.0, rng)[0] for _ in range(D["clips"])]
        pair = cvrl.PairSampler(frames, stride, "decreasing", 1.0)
        pairs = [np.concatenate(pair(n, 30.0, rng)) for _ in range(D["pairs"])]
        seq = np.stack(_sequential_rgb(path))  # (N, H, W, 3)
        limit = _Limit(path)
        readers = {"ours": lambda p, idx: data.read_frames(p, idx).numpy(), "limit": lambda p, idx: limit.read(idx),
                   **{k: v[1] for k, v in peers.items()}}
        row = dict(format=fmt.name, note=fmt.note, frames=n, exact={}, singles={}, pairs={}, errors={})
        for name, read in readers.items():
            try:
                row["exact"][name] = bool(np.array_equal(read(path, pairs[0]), seq[pairs[0]]))
            except Exception as e:  # noqa: BLE001 -- a peer that fails on a format is reported, not fatal
                if name in ("ours", "limit"):
                    raise
                row["errors"][name] = f"{type(e).__name__}: {e}"[:120]
        ok = [k for k in readers if k not in row["errors"]]
        for kind, clips in (("singles", singles), ("pairs", pairs)):
            best = {k: float("inf") for k in ok}
            decoded = {}
            for _ in range(D["rounds"]):
                spent = {k: 0.0 for k in ok}
                limit.decoded = 0
                st = {}
                for idx in clips:
                    for k in ok:
                        t0 = time.perf_counter()
                        if k == "ours":
                            data.read_frames(path, idx, stats=st)
                        else:
                            readers[k](path, idx)
                        spent[k] += time.perf_counter() - t0
                best = {k: min(best[k], spent[k]) for k in ok}
                decoded = dict(ours=st.get("decoded", 0) / len(clips), limit=limit.decoded / len(clips))
            row[kind] = {k: len(clips) / best[k] for k in ok}
            row[f"{kind}_decoded"] = decoded
        limit.close()
        res["formats"].append(row)
        s_, p_ = row["singles"], row["pairs"]
        log(f"  {fmt.name}: clips/s/core " + ", ".join(f"{k} {v:.1f}" for k, v in s_.items())
            + " | pairs/s/core " + ", ".join(f"{k} {v:.1f}" for k, v in p_.items())
            + (f" | errors: {row['errors']}" if row["errors"] else ""))
    return res


def render_decoders(p, env, lines):
    peers = list(p["peers"])
    lines += ["### 5. Decoders: ours against the peers and the limit", ""] + _provenance(p, env) + [
              f"clip = {p['clip']} from a random start (data.RandomClip), CVRL pair = cvrl.PairSampler(decreasing); "
              f"{p['clips']} clips and {p['pairs']} pairs per format, the same for every reader, one process, one "
              f"thread, best of {p['rounds']} rounds with the readers taking turns clip by clip. *ours* = "
              "data.read_frames (open, header, seek, decode, RGB). Peers, where installed (never dependencies): "
              + ", ".join(f"{k} {v}" for k, v in p["peers"].items())
              + "; torchcodec with seek_mode='approximate', OpenCV through its FFmpeg backend (position, read on), "
              "whole-video PyAV decodes every frame and keeps the wanted ones. *limit* = the same FFmpeg "
              "(through PyAV) on a container opened once, knowing the keyframes: seek, decode from the keyframe to "
              "the last wanted frame, RGB of the wanted frames only; opening is not counted (scripts/bench.py "
              "`_Limit`). A reader marked * did not return a sequential decode's frames.", ""]
    for kind, title in (("singles", "single clips"), ("pairs", "CVRL pairs")):
        unit = "clips/s" if kind == "singles" else "pairs/s"
        lines += [f"**{title}**, {unit} per core", "",
                  "| format | ours | " + " | ".join(peers) + " | limit | ours / limit | ours / best peer | "
                  "frames decoded: ours, limit |",
                  "|---|---|" + "---|" * len(peers) + "---|---|---|---|"]
        for r in p["formats"]:
            v = r[kind]

            def cell(k):
                if k in r["errors"]:
                    return "fails"
                return f"{v[k]:.1f}" + ("" if r["exact"].get(k, True) else "*")
            exact_peers = [v[k] for k in peers if k in v and r["exact"].get(k)]
            best = max(exact_peers) if exact_peers else None
            d = r[f"{kind}_decoded"]
            lines.append(f"| {r['format']} | **{cell('ours')}** | " + " | ".join(cell(k) for k in peers)
                         + f" | {cell('limit')} | {v['ours'] / v['limit']:.2f} | "
                         + (f"{v['ours'] / best:.2f}" if best else "n/a")
                         + f" | {d.get('ours', 0):.0f}, {d.get('limit', 0):.0f} |")
        lines.append("")


# ----------------------------------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------------------------------

def _f(x, fmt="{:.2f}", none="n/a"):
    return none if x is None else fmt.format(x)


def _flops(x):
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e6:.3g} MFLOP/s"


DATA_TAG = "<!-- bench-data"


def _provenance(sec, env):
    """A section kept from an earlier (--only) run says when and how it was measured."""
    m = sec.get("measured")
    if not m or (m["command"], m["date"]) == (env["command"], env["date"]):
        return []
    return [f"*(measured {m['date']} by `{m['command']}`, load average {', '.join(map(str, m['load_avg']))})*", ""]


def _flop_rule_note(mod):
    """How a model row's training FLOPs were counted: the rule of train_flops_per_clip, or the earlier one."""
    who = "fwd + bwd" if mod["kind"] == "cvrl" else "student fwd + bwd, teacher fwd"
    if mod.get("flop_rule") == FLOP_RULE:
        return f"{who}; bwd = 2 x fwd less the stem's input gradient, {mod['stem_gmac_per_clip']:.3f} GMAC"
    return (f"{who}, counted by the earlier rule, bwd = 2 x fwd with the stem's input gradient: GFLOP and MFU "
            f"slightly high, see 'How FLOPs are counted'")


def _section1_row(r, name, variant):
    """Section 1's measured row of model `name` for `variant` (else the same variant with the fused optimizer,
    which is all a time-limited GPU call may have measured) -> (row, its batch in clips) or (None, None)."""
    for mod in (r.get("model") or {}).get("models", []):
        if mod["name"] != name:
            continue
        for cand in (variant, variant + " + fused SGD", variant + " + fused AdamW"):
            row = next((x for x in mod["rows"] if x["variant"] == cand and "clips_per_s" in x), None)
            if row:
                return row, mod["batch_clips"]
    return None, None


ASRUN_HEADER = ["| model | row | videos/step | steps/s | clips/s | achieved | MFU | peak memory | first step | notes |",
                "|---|---|---|---|---|---|---|---|---|---|"]
LOADER_HEADER = ["| model | step | video format | workers | videos/step | steps timed | clips/s | waiting for data | "
                 "step as run from host memory, clips/s |", "|---|---|---|---|---|---|---|---|---|"]


def render_asrun(a, r, env, lines):
    lines += ["### 1b. Step as run: the training scripts' own steps", ""] + _provenance(a, env) + [
              "cvrl.train_step and lss.train_step with the training scripts' networks, optimizers (not fused), "
              "schedules, augmentation, views, losses, EMA teacher and centre, built as cvrl.train and lss.train build "
              f"them, fed from a uint8 batch of decoded videos ({a['canvas'][0]}x{a['canvas'][1]}, the size the "
              f"loader row's files decode to) in {a['host']}, copied to the device every step as the loop copies a "
              "batch (no decoding); the loop's log values are summed on the device "
              "and read every 10 steps. *model only* = section 1's step of the same model at the same batch, on float "
              "clips already on the device (the variant that matches what the script runs here). clips/s counts 2 "
              "clips per video (CVRL's two clips, LSS's two global views); MFU counts what the step computes (LSS: "
              "the local views too). Timing as in section 1.", ""] + ASRUN_HEADER
    for mod in a["models"]:
        for row in mod["rows"]:
            notes = "; ".join(row.get("notes", []))
            if "error" in row:
                lines.append(f"| {mod['name']} | {row['row']}: {row['variant']} | {row['videos_per_step']} | error: "
                             f"{row['error']} | | | | | | {notes} |")
                continue
            lines.append(f"| {mod['name']} | {row['row']}: {row['variant']} | {row['videos_per_step']} | "
                         f"{row['steps_per_s']:.3f} | **{row['clips_per_s']:.2f}** | {_flops(row['tflops'] * 1e12)} | "
                         f"{_f(row['mfu'], '{:.1%}')} | {_f(row['peak_mem_gb'], '{:.1f} GB')} | "
                         f"{row['first_step_s']:.1f} s | {notes} |")
            if row["row"] == "as run" and row["compiled"]:  # its model-only row is section 1's compiled one
                dev = torch.device("cpu" if env["device"].startswith("CPU") else "cuda")
                variant = matching_variant(mod["kind"], dev, True)["name"]
                ref, batch = _section1_row(r, mod["name"], variant)
                if ref is None:
                    lines.append(f"| {mod['name']} | model only: {variant} | | not measured in this run's section 1 "
                                 "| | | | | | |")
                else:
                    lines.append(f"| {mod['name']} | model only: {ref['variant']} (section 1) | {batch // 2} | "
                                 f"{ref['steps_per_s']:.3f} | **{ref['clips_per_s']:.2f}** | "
                                 f"{_flops(ref['tflops'] * 1e12) if ref.get('tflops') else 'n/a'} | "
                                 f"{_f(ref.get('mfu'), '{:.1%}')} | {_f(ref.get('peak_mem_gb'), '{:.1f} GB')} | "
                                 f"{_f(ref.get('first_step_s'), '{:.1f} s')} | section 1's row of this run |")
    notes = [n for mod in a["models"] for n in mod.get("notes", [])]
    lines.append("")
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    if a.get("loader"):
        lines += ["**Loader row**: the CVRL step as run fed by the training loader itself, built and looped over as "
                  "cvrl.train does (data.VideoDataset with cvrl.PairSampler, data.make_loader with pinned memory on "
                  "a GPU, training.Steps, which adds up the time the loop waits for a batch), workers = cores - 2 (at "
                  "least 1). The first round of batches (one per worker) is not timed; *waiting for data* = time "
                  "blocked on the loader / total time, up to a final sync.", ""] + LOADER_HEADER
        for row in a["loader"]:
            asrun = next((x for mod in a["models"] if mod["name"] == row["name"] for x in mod["rows"]
                          if x["row"] == "as run" and x["variant"] == row.get("step") and "clips_per_s" in x), None)
            if "error" in row:
                lines.append(f"| {row['name']} | | | | | | error: {row['error']} | | |")
                continue
            lines.append(f"| {row['name']} | {row['step']} | {row['format']} | {row['workers']} | "
                         f"{row['videos_per_step']} | {row['steps_timed']} | **{row['clips_per_s']:.2f}** | "
                         f"**{row['data_wait']:.0%}** | {_f(asrun and asrun['clips_per_s'])} |")
        lines.append("")


def render_asrun_pending(lines):
    """The GPU rows of section 1b, before any GPU has measured them."""
    pending = "pending (no GPU lent yet)"
    lines += ["## Step as run on a GPU — " + pending, "",
              "Command: `python scripts/bench.py --preset gpu --only asrun` (sections 2c and 2d of "
              "`scripts/gpu_check.sh`). What the rows are: section 1b of the CPU presets below.", ""] + ASRUN_HEADER
    for name, kind in (("CVRL R3D-50 16x224", "cvrl"), ("LSS ViT-B/16 8x224 (divided space-time)", "lss")):
        for what, compiled in (("as run", False), ("model only", False), ("as run", True), ("model only", True)):
            variant = (f"{kind}.train_step" + (", --compile" if compiled else "") if what == "as run" else
                       matching_variant(kind, torch.device("cuda"), compiled)["name"])
            lines.append(f"| {name} | {what}: {variant} | {pending} | | | | | | | |")
    lines += ["", "Loader row:", ""] + LOADER_HEADER + [
              f"| CVRL R3D-50 16x224 | cvrl.train_step, --compile | H.264 342x256, a keyframe every 16 frames, x264 "
              f"tune fastdecode, CRF 23 (`reencode.reencode_video`'s defaults) | cores - 2 | | | {pending} | "
              f"{pending} | |", ""]


FLOPS_NOTE = (
    "How FLOPs are counted (scripts/bench.py `train_flops_per_clip`): forward = 2 FLOPs per multiply-accumulate of "
    "every convolution, linear layer and attention matmul (torch.utils.flop_counter on the meta device); backward = "
    "2 x forward (input and weight gradients) minus the input gradient of the first convolution (R3D's stem, the "
    "ViT's patch embedding), which autograd never computes because the clip needs no gradient. Not counted: "
    "BatchNorm and LayerNorm, activations, softmax, pooling, the losses, the augmentation, the optimizer and the EMA "
    "update. CVRL R3D-50 16x224: 3 x 2 x 45.53 - 2 x 4.72 (stem) = 263.7 GFLOP per clip trained (273.2 before the "
    "stem's input gradient was left out); LSS ViT-B/16 8x224: student 3 x 2 x 196.23 - 2 x 0.92 (patch embedding) "
    "+ teacher 2 x 196.23 = 1568.0 GFLOP per clip (1569.8 before). Model rows recorded before this rule say so; "
    "their MFU is high by those ratios (CVRL 3.6%, LSS 0.1%).")


def render_run(r, lines):
    env, P = r["env"], r["preset"]
    lines += [f"## Preset `{P}` — {env['device']}", "",
              f"- command: `{env['command']}`",
              f"- date: {env['date']}; git {env['git'] or 'n/a'}",
              f"- device: {env['device']}; CPU: {env['cpu']} ({env['cpu_cores']} cores visible, load average "
              f"{', '.join(map(str, env['load_avg']))} at start)",
              f"- torch {env['torch']} (cuDNN {env['cudnn'] or 'n/a'}), torchvision {env['torchvision']}, "
              f"PyAV {env['av']}, Python {env['python']}; {env.get('torch_threads', '?')} torch thread(s) in the "
              f"main process, 1 in each DataLoader worker", ""]
    if env["device"].startswith("CPU"):
        lines += ["> CPU numbers come from a 2-core VM that other jobs may share (see the load average at start); "
                  "compare rows within a run. MFU and peak memory are reported on GPUs only.", ""] if env["cpu_cores"] <= 2 else \
                 ["> CPU run: MFU and peak memory are reported on GPUs only.", ""]
    if r.get("model"):
        m = r["model"]
        how = "CUDA events" if m["peak_flops_bf16"] or env["device"] != "CPU only (no GPU visible)" else "wall clock"
        lines += ["### 1. Model step", ""] + _provenance(m, env) + [
                  f"Synthetic inputs already on the device; median of {r['timing']['windows']} windows of "
                  f"{r['timing']['per_window']} steps after {r['timing']['warmup']} warm-up steps ({how}). Rows "
                  "after the first two are cumulative, top to bottom, on "
                  + ("bf16" if m.get("bf16_base", True) else "fp32 (this CPU has no bf16 hardware: see the bf16 row)")
                  + "; *first step* includes compilation (short when inductor's on-disk cache already holds the "
                  "graphs from an earlier run). "
                  + (f"MFU = analytic training FLOPs / time / dense bf16 peak ({m['peak_flops_bf16'] / 1e12:.0f} "
                     "TFLOP/s), also for the fp32 row." if m["peak_flops_bf16"] else "MFU: n/a (no GPU peak)."), ""]
        lines += ["FLOP counter (torch.utils.flop_counter on the meta device, MACs = FLOPs / 2) against "
                  "docs/perf.md:", "", "| model | counted GMAC fwd | perf.md | difference |",
                  "|---|---|---|---|"]
        for c in m["flop_check"]:
            lines.append(f"| {c['model']} | {c['gmac_counted']:.2f} | {c['gmac_perf_md']:.2f} | {c['rel_diff']:+.1%} |")
        lines.append("")
        for mod in m["models"]:
            lines += [f"**{mod['name']}** — {mod['fwd_gmac_per_clip']:.3f} GMAC fwd per clip, "
                      f"{mod['train_gflop_per_clip']:.2f} GFLOP per clip trained ({_flop_rule_note(mod)}), batch "
                      f"{mod['batch_clips']} clips ({mod['batch_source']})", "",
                      "| variant | steps/s | clips/s | achieved | MFU | peak memory | first step |",
                      "|---|---|---|---|---|---|---|"]
            for row in mod["rows"]:
                if "skipped" in row or "error" in row:
                    lines.append(f"| {row['variant']} | {row.get('skipped') or 'error: ' + row['error']} | | | | | |")
                    continue
                lines.append(f"| {row['variant']} | {row['steps_per_s']:.3f} | {row['clips_per_s']:.2f} | "
                             f"{_flops(row['tflops'] * 1e12)} | {_f(row['mfu'], '{:.1%}')} | "
                             f"{_f(row['peak_mem_gb'], '{:.1f} GB')} | {row['first_step_s']:.1f} s |")
            lines.append("")
    if r.get("asrun"):
        render_asrun(r["asrun"], r, env, lines)
    if r.get("pipeline"):
        p = r["pipeline"]
        ws = sorted({1, p["workers_max"]})
        lines += ["### 2. Input pipeline", ""] + _provenance(p, env) + [
                  f"Videos encoded by this script (textured pan + moving shape + sensor noise), clip = {p['clip']}, "
                  f"decoded at full size. *decode* = read_clips in one process, one thread (what one DataLoader "
                  f"worker does). *loader* = batches of {p.get('loader_batch', '?')} clips out of data.make_loader, "
                  f"steady state; *+ augment* = the same with {p['workers_max']} workers, then data.augment to "
                  f"{p['crop']}x{p['crop']} on {p['device']}"
                  + (" (on a CPU-only machine the augmentation runs on the cores the workers decode on)."
                     if p["device"] == "cpu" else "."), "",
                  "| video | kb/s | keyframes (max gap) | decode clips/s/core | frames decoded per clip | "
                  + " | ".join(f"loader clips/s, {w} worker{'s' * (w > 1)}" for w in ws) + " | + augment clips/s |",
                  "|---|---|---|---|---|" + "---|" * (len(ws) + 1)]
        for row in p["formats"]:
            lines.append(f"| {row['format']}{' (' + row['note'] + ')' if row.get('note') else ''} | {row['kbps']} | "
                         f"{row['keyframes']} ({row['max_key_gap']}) | {row['decode_clips_per_s_1core']:.1f} | "
                         f"{row['frames_decoded_per_clip']:.0f} | "
                         + " | ".join(f"{row[f'loader_clips_per_s_w{w}']:.1f}" for w in ws)
                         + f" | {row.get('loader_aug_clips_per_s', float('nan')):.1f} |")
        lines += ["", "CVRL's two clips per video: cvrl.PairSampler through read_clips (one open; clips with no "
                  "keyframe between them share one seek and one decoding pass) against decoding the whole video sequentially with PyAV (rgb24) and slicing "
                  "two clips. One process, one thread.", "",
                  "| video | PairSampler videos/s | frames decoded | seeks | whole-video videos/s | frames decoded | "
                  "speed-up |", "|---|---|---|---|---|---|---|"]
        for row in p["pairs"]:
            lines.append(f"| {row['format']} | {row['pair_videos_per_s']:.1f} | {row['pair_frames_decoded']:.0f} | "
                         f"{row['pair_seeks']:.1f} | {row['naive_videos_per_s']:.1f} | "
                         f"{row['naive_frames_decoded']:.0f} | x{row['speedup']:.2f} |")
        redo = [row["format"] for row in p["pairs"] if row["pair_frames_decoded"] >= 0.8 * row["naive_frames_decoded"]]
        if redo:
            lines += ["", f"Note ({', '.join(redo)}): with a keyframe interval as long as the video, a pair is "
                      "decoded from the start of the file to the end of its later clip, close to the whole video; "
                      "it still wins by converting only the kept frames to RGB. Re-encoding with `python data.py "
                      "reencode` removes the problem."]
        lines += ["", "Data wait in a real CVRL training loop (loader -> 2 augmentations -> encoder + head -> NT-Xent "
                  "-> SGD, synchronised each step as cvrl.py is):", "",
                  "| video | model | videos/step | workers | step | of which: waiting for data | augmentation "
                  "(2 views) | model step | clips/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in p["data_wait"]:
            aug = row.get("augment_s", 0.0)
            lines.append(f"| {row['format']} | {row['model']} @ {row['crop']} | {row['batch_videos']} | "
                         f"{row['workers']} | {row['step_s'] * 1e3:.0f} ms | **{row['data_wait']:.0%}** | "
                         f"{aug / row['step_s']:.0%} | {(row['compute_s'] - aug) / row['step_s']:.0%} | "
                         f"{row['clips_per_s']:.1f} |")
        lines.append("")
    if r.get("notes"):
        lines += ["### Notes on this run", ""] + [f"- {n}" for n in r["notes"]] + [""]
    if r.get("augment"):
        a = r["augment"]
        lines += ["### 3. Augmentation", ""] + _provenance(a, env) + [
                  f"{a['batch']}: random resized crop (area 0.3-1, aspect 0.5-2), flip, colour jitter (p 0.8, "
                  "random order), grayscale (p 0.2); in cvrl.py's rows also Gaussian blur and solarize as its two "
                  "views draw them (half the clips each view). data.augment draws parameters per clip in one batched "
                  "pass; the baseline loops over clips with torchvision.transforms.v2 on each (T, C, H, W) clip.", "",
                  "| device | ops | data.augment | clips/s | torchvision per-clip loop | clips/s | speed-up |",
                  "|---|---|---|---|---|---|---|"]
        for row in a["rows"]:
            lines.append(f"| {row['device']} | {row.get('ops', 'crop, flip, jitter, grayscale')} | "
                         f"{row['augment_s'] * 1e3:.0f} ms | {row['augment_clips_per_s']:.1f} | "
                         f"{row['torchvision_s'] * 1e3:.0f} ms | {row['torchvision_clips_per_s']:.1f} | "
                         f"x{row['speedup']:.1f} |")
        lines.append("")
    if r.get("reencode"):
        render_reencode(r["reencode"], env, lines)
    if r.get("decoders"):
        render_decoders(r["decoders"], env, lines)


def render_pending(lines):
    lines += ["## Preset `gpu` — " + PENDING, "",
              "Command: `python scripts/bench.py --preset gpu` (one GPU; CVRL R3D-50 16x224 and LSS ViT-B/16 8x224 at "
              "the largest batch that fits, 224 crops, all CPU cores as decode workers).", "",
              "| section | row | result |", "|---|---|---|"]
    for model in ("CVRL R3D-50 16x224", "LSS ViT-B/16 8x224"):
        for v in variants("cvrl" if model.startswith("CVRL") else "lss", True, True):
            lines.append(f"| 1. model step | {model}, {v['name']}: steps/s, clips/s, MFU, peak memory | {PENDING} |")
    lines += [f"| 2. input pipeline | loader clips/s with GPU augmentation, per worker and at all cores | {PENDING} |",
              f"| 2. input pipeline | data-wait fraction, CVRL R3D-50 bf16 fed by the loader | {PENDING} |",
              f"| 3. augmentation | data.augment vs torchvision per-clip loop on the GPU | {PENDING} |", ""]


def write_markdown(path, runs):
    lines = ["# Benchmarks", "",
             "Generated by `scripts/bench.py` — do not edit by hand. Regenerate with `python scripts/bench.py` "
             "(CPU preset) or `python scripts/bench.py --preset gpu`; each run replaces its own preset's section (per "
             "device for the gpu preset) and keeps the others (their data sit in a comment at the end of this file). What is measured and how: "
             "the docstring of scripts/bench.py. Targets and published numbers: docs/perf.md.", "", FLOPS_NOTE, ""]
    gpus = sorted((k for k in runs if k.startswith("gpu")), key=lambda k: runs[k]["env"].get("date", ""), reverse=True)
    order = gpus + [p for p in ("cpu", "smoke") if p in runs] + [p for p in runs if p not in gpus + ["cpu", "smoke"]]
    if not gpus:
        render_pending(lines)
    if not any(runs[k].get("asrun") for k in gpus):
        render_asrun_pending(lines)
    for p in order:
        render_run(runs[p], lines)
    lines += [f"{DATA_TAG}\n{json.dumps(runs, separators=(',', ':'))}\n-->", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))


def run_key(run):
    """Where a run is kept in BENCHMARKS.md: one section per preset, and per device for the gpu preset (an H200 run
    does not replace an H100 one)."""
    return f"gpu {run['env']['device']}" if run["preset"] == "gpu" else run["preset"]


def previous_runs(path):
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    i = text.rfind(DATA_TAG)
    if i < 0:
        return {}
    try:
        runs = json.loads(text[i + len(DATA_TAG):].strip().removesuffix("-->").strip())
    except json.JSONDecodeError:
        return {}
    return {run_key(r): r for r in runs.values()}


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------

def merge_runs(parts):
    """Partial runs of one preset -> one run: the first file's env, each section from the files that have it (model
    rows concatenated in file order), notes appended."""
    presets = {p["preset"] for p in parts}
    if len(presets) != 1:
        raise SystemExit(f"error: --merge needs runs of one preset, got {sorted(presets)}")
    run = dict(preset=presets.pop(), env=parts[0]["env"], timing=parts[0].get("timing", {}), notes=[])
    for p in parts:
        for sec in ("pipeline", "augment", "reencode", "decoders"):
            if p.get(sec):
                run[sec] = p[sec]
        if p.get("asrun"):  # per-model calls (gpu_check.sh's 2c and 2d): rows and loader rows concatenated
            if "asrun" not in run:
                run["asrun"] = dict(p["asrun"], models=[], loader=[])
            run["asrun"]["models"] += p["asrun"]["models"]
            run["asrun"]["loader"] += p["asrun"].get("loader", [])
        if p.get("model"):
            if "model" not in run:
                run["model"] = dict(p["model"], models=[])
            run["model"]["models"] += p["model"]["models"]
        run["notes"] += p.get("notes", [])
    return run


SECTIONS = ["model", "asrun", "pipeline", "augment", "reencode", "decoders"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default=None,
                    help="shapes and repetitions (default: gpu when a GPU is visible, else cpu)")
    ap.add_argument("--only", action="append", choices=SECTIONS,
                    help="run only this section (repeatable; asrun = 1b, the step as run); default all of them")
    ap.add_argument("--out-md", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--out-json", default=str(ROOT / "results" / "bench.json"))
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="DataLoader workers for the 'all workers' rows (default: the visible CPU cores)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads in this process (default: torch's, one per core). On a shared, "
                         "loaded machine use 1: OpenMP threads that wait for a descheduled sibling at every barrier "
                         "can make a 2-thread step several times slower than a 1-thread one")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="run nothing: combine the --out-json files of partial runs of one preset (separate --only / "
                         "--model-kind calls, e.g. on a time-limited GPU lease) into one section of --out-md. Model "
                         "rows are concatenated; a file's 'notes' list is rendered as bullets")
    ap.add_argument("--model-kind", choices=["cvrl", "lss"], default=None,
                    help="model section: only this method's step (a partial run keeps the other's rows)")
    ap.add_argument("--variants", default=None,
                    help="model section: run only these variants, names as printed, separated by ';' (the others are "
                         "listed as not run); for a time-limited GPU lease")
    ap.add_argument("--asrun-modes", choices=["both", "eager", "compiled"], default="both",
                    help="section 1b: both = the eager step as run and section 1's matching step, plus the compiled "
                         "step as run on a GPU when the preset compiles; eager; compiled = only the compiled step as "
                         "run (beside section 1's compiled row, if the same section has one; on a CPU too)")
    ap.add_argument("--formats", default=None,
                    help="pipeline section: only the formats whose name contains this text (e.g. 'GOP 16')")
    ap.add_argument("--augment-cpu", choices=["yes", "no"], default="yes",
                    help="augmentation section: also time the CPU (slow at the gpu preset's shapes)")
    ap.add_argument("--steps", type=int, nargs=3, default=None, metavar=("WARMUP", "WINDOWS", "PER_WINDOW"),
                    help="model section timing: warm-up steps, timed windows, steps per window (default: the preset's)")
    ap.add_argument("--video-cache", default=None,
                    help="where the encoded test videos are kept (default: results/cache/bench-videos)")
    a = ap.parse_args(argv)
    if a.merge:
        runs = previous_runs(a.out_md)
        merged = merge_runs([json.loads(Path(f).read_text()) for f in a.merge])
        runs[run_key(merged)] = merged
        write_markdown(a.out_md, runs)
        print(f"merged {len(a.merge)} file(s) into the {merged['preset']} section of {a.out_md}")
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = a.preset or ("gpu" if device.type == "cuda" else "cpu")
    P = dict(PRESETS[preset])
    if a.no_compile:
        P["compile"] = False
    if a.model_kind:
        P["models"] = [m for m in P["models"] if m["kind"] == a.model_kind]
    if a.variants:
        P["only_variants"] = [v.strip() for v in a.variants.split(";") if v.strip()]
    if a.formats:
        P["formats"] = [f for f in P["formats"] if a.formats in f.name]
        if not P["formats"]:
            raise SystemExit(f"error: no format of preset {preset} contains {a.formats!r}")
    if a.steps:
        P["warmup"], P["windows"], P["per_window"] = a.steps
    sections = a.only or SECTIONS
    log = lambda s: print(s, flush=True)  # noqa: E731
    env = environment(device)
    log(f"bench: preset {preset}, device {env['device']}, CPU {env['cpu']} x{env['cpu_cores']}, torch {env['torch']}")
    run = dict(preset=preset, env=env, timing=dict(warmup=P["warmup"], windows=P["windows"], per_window=P["per_window"]))
    t_all = time.perf_counter()
    cache = Path(a.video_cache) if a.video_cache else ROOT / "results" / "cache" / "bench-videos"
    if {"asrun", "pipeline", "reencode", "decoders"} & set(sections):
        cache.mkdir(parents=True, exist_ok=True)
    devices = ([torch.device("cpu")] if a.augment_cpu == "yes" or device.type != "cuda" else []) \
        + ([device] if device.type == "cuda" else [])  # the augmentation section's
    found = lambda: {mod["name"]: mod["batch_clips"] for mod in run.get("model", {}).get("models", [])}  # noqa: E731
    steps = {"model": ("1. model step", lambda: bench_models(P, device, log)),
             "asrun": ("1b. step as run", lambda: bench_asrun(P, device, cache, log, found(), {
                 "both": None, "eager": [False], "compiled": [True]}[a.asrun_modes])),
             "pipeline": ("2. input pipeline", lambda: bench_pipeline(P, device, max(1, a.workers), cache, log)),
             "augment": ("3. augmentation", lambda: bench_augment(P, devices, log)),
             "reencode": ("4. re-encode formats", lambda: bench_reencode(P, cache, log, device)),
             "decoders": ("5. decoders: ours, the peers, the limit", lambda: bench_decoders(P, cache, log))}
    for sec in SECTIONS:  # in this order, whatever the order of --only
        if sec in sections:
            title, measure = steps[sec]
            log(title)
            t0 = time.perf_counter()
            run[sec] = measure()
            run[sec]["seconds"] = time.perf_counter() - t0
            log(f"   ({sec}: {run[sec]['seconds']:.0f} s)")
    for sec in sections:
        run[sec]["measured"] = dict(date=env["date"], command=env["command"], load_avg=env["load_avg"])
    run["total_s"] = time.perf_counter() - t_all
    Path(a.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_json).write_text(json.dumps(run, indent=1))
    runs = previous_runs(a.out_md)
    key = run_key(run)
    if a.only and key in runs:  # a partial run keeps the sections it did not redo
        run = {**runs[key], **{k: v for k, v in run.items() if k in sections or k in ("env", "timing", "total_s")}}
    runs[key] = run
    write_markdown(a.out_md, runs)
    log(f"wrote {a.out_json} and {a.out_md} in {run['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
