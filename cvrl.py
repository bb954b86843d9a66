"""
CVRL: Spatiotemporal Contrastive Video Representation Learning.
Qian, Meng, Gong, Yang, Wang, Belongie, Cui. CVPR 2021, arXiv:2008.03800.

CVRL is SimCLR for video. From every unlabeled video we sample two short clips (16 frames at stride 2) whose
start frames are a random interval apart, with short intervals more likely than long ones (the temporal
augmentation). Each clip gets its own spatial augmentation (crop, flip, colour jitter, blur, ...) that is drawn
once per clip and applied identically to all of its frames (temporally consistent). A 3D ResNet (R3D-50, a
SlowOnly-style network) maps each clip to a 2048-d feature, a 3-layer MLP maps that to a 128-d embedding, and the
InfoNCE / NT-Xent loss pulls the two clips of a video together and pushes them away from the clips of every other
video in the global batch. After pretraining the MLP is thrown away and the encoder is evaluated with a linear
classifier on its frozen features.

The reference for every detail below is the official TF2 code in tensorflow/models,
`official/projects/video_ssl/` ([TFM]); docs/cvrl.md (cited as "cvrl.md §x") summarises it with sources and
flags where it differs from a plain reading of the paper. Where we follow the code rather than the paper, the
comment says so.

Commands
    # CPU, no arguments: a tiny R3D on the built-in synthetic videos (10-12 min on 2 cores), then the linear probe
    python cvrl.py
    python eval_linear.py --ckpt runs/cvrl/checkpoint.pt            # and --random-init for the baseline

    # smoke test (seconds)
    python cvrl.py --epochs 1 --max-steps 5 --out runs/smoke

    # your own videos: every video under the folder, any layout, no labels; then what the features find similar
    python cvrl.py --data ~/videos --out runs/mine
    python scripts/neighbours.py --ckpt runs/mine/checkpoint.pt --out runs/mine/neighbours.png

    # one GPU, UCF101 split 1, R3D-18 at 16x112
    python cvrl.py --dataset ucf101 --data UCF-101 --annotations ucfTrainTestlist --fold 1 --arch r3d18 \
        --frames 16 --stride 2 --temperature 0.1 --size 112 --canvas 128 171 --batch-size 64 --epochs 100 \
        --workers 8 --out runs/ucf

    # the paper's recipe: R3D-50, 16x224, global batch 1024 videos, 200 epochs on Kinetics-400, 8 GPUs
    torchrun --standalone --nproc_per_node=8 cvrl.py --dataset kinetics --data k400 --annotations k400/annotations \
        --arch r3d50 --frames 16 --stride 2 --temperature 0.1 --size 224 --canvas 256 340 --head-hidden 2048 \
        --batch-size 128 --epochs 200 --warmup-epochs 5 --lr 0.32 --workers 12 --compile --out runs/k400

    Re-running a command with the same --out resumes from OUT/checkpoint.pt (same schedule); Ctrl-C saves first.
"""

from __future__ import annotations  # type hints may name what comes further down (the file reads in paper order)

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import reduce
from tqdm import tqdm

import data
from data import SyntheticWorld
import training

# ----------------------------------------------------------------------------- temporal interval sampler
# Paper Sec 3.1, cvrl.md §1. Official: `official/projects/video_ssl/ops/video_ssl_preprocess_ops.py`,
# function `sample_ssl_sequence`, called with num_steps=16, stride=2 on the list of stored frames.
#
# Notation: L stored frames, n frames per clip, stride s. One clip spans (n-1)s+1 raw frames, so the whole clip
# fits for the M = L - (n-1)s start frames 0..M-1 (if L > (n-1)s). The sampler
#   1. draws the interval t = |start_2 - start_1| in raw frames from P(t),
#   2. puts the earlier clip uniformly where both fit: a ~ U{0..M-t-1}, b = a + t,
#   3. shuffles (a, b), so which clip comes first is random. This matters downstream: view 1 and view 2 get
#      different augmentations (blur 1.0 vs 0.1, solarize 0 vs 0.2, cvrl.md §2.3), and the shuffle makes it
#      random whether the earlier or the later clip gets the heavy blur.
#
# The paper writes the default as P(t) ∝ -t + c. The code uses the continuous density on [0, M]
#     f_p(x) = (p+1)/(p M) * (1 - (x/M)^p),      CDF  F_p(x) = -x^(p+1) / (p M^(p+1)) + (p+1) x / (p M),
# with the power p hard-coded to 1, giving f_1(x) = 2(M-x)/M^2: the paper's line with c = M (density zero at the
# longest interval). The paper's ablation (Fig. 3) also tries, as far as cvrl.md §1.4 could tell without the PDF,
# p = 0.5 and p = 2, a uniform P(t) = 1/M and an increasing P(t) = 2t/M^2; all five are here (`distribution`,
# `power`).
#
# How t is drawn, and why `interval_pmf` is exact. Draw u ~ U(0,1). The official code bisects over the integers
# 0..M for the largest k with F(k) <= u (a tf.while_loop). F is increasing on [0, M], so that k is
# floor(F^{-1}(u)): t is the continuous inverse-CDF sample x = F^{-1}(u) rounded down, hence
#     P(t = k) = P(k <= x < k+1) = F(k+1) - F(k),     k = 0..M-1.
# For p = 1 the inverse has a closed form, F^{-1}(u) = M(1 - sqrt(1-u)), so t = floor(M(1 - sqrt(1-u))) (equal
# to the bisection on every draw, cvrl.md §1.2; a test checks it). For the uniform and increasing variants
# F(x) = x/M and F(x) = (x/M)^2, so t = floor(M u) and t = floor(M sqrt(u)). One formula, F(k+1) - F(k), gives
# the pmf of every variant, and the tests compare the sampler's histogram with it.
#
# What the default really is (cvrl.md §1.3). Take two INDEPENDENT uniform starts on [0, M). Their distance
# |x - y| has the triangular density 2(M-t)/M^2 = f_1(t), and given the distance the earlier start is uniform
# on [0, M-t). That is exactly steps 1-3 above: the default CVRL sampler IS two independent uniform clip starts.
# The discrete version differs in one place only. With P(t=k) = (2(M-k)-1)/M^2:
#     P(start_1 = x, start_2 = y) = 1/2 * P(t=d) / (M-d) = (1 - 1/(2(M-d))) / M^2     for d = |x-y| > 0,
#     P(start_1 = start_2)        = P(t=0)             = (2M-1)/M^2 ~ 2/M               (independent: 1/M),
# i.e. identical clips are about twice as likely as with independent starts, and the rest is uniform up to
# O(1/M). So the interesting part of the ablation is the alternatives: 'uniform' and 'increasing' over-sample
# distant pairs compared with independent starts, and p < 1 over-samples close pairs
# (E[t]/M = (p+1)/(2(p+2)): 0.30, 0.33, 0.375 for p = 0.5, 1, 2; 0.5 uniform, 0.67 increasing).
#
# Short videos, L <= (n-1)s: the official code sets M = L and draws both starts independently from U{0..L-1}
# (the interval distribution is not used). Indices are always taken modulo L: the official code tiles
# range(L) and gathers from it, i.e. the video loops, so a clip that runs past the end wraps to the start.
# (One corner differs from the code: it tests "M == L" rather than "L <= (n-1)s", which also sends frames=1
# to the independent branch. We keep the interval distribution for frames=1; nobody trains on 1-frame clips.)
#
# Everything here is numpy on purpose: the data pipeline calls `sampler(num_frames, rng)` inside DataLoader
# workers, each with its own np.random.Generator, and the sampler object is pickled into them.

DISTRIBUTIONS = ("decreasing", "uniform", "increasing")


def interval_cdf(x, M: int, distribution: str = "decreasing", power: float = 1.0):
    """The continuous CDF F(x) on [0, M] of the interval between the two clip starts (works on arrays)."""
    x = np.asarray(x, dtype=np.float64)
    if distribution == "decreasing":
        p = power
        return -x ** (p + 1) / (p * M ** (p + 1)) + (p + 1) * x / (p * M)
    if distribution == "uniform":
        return x / M
    if distribution == "increasing":
        return (x / M) ** 2
    raise ValueError(f"unknown interval distribution {distribution!r}, expected one of {DISTRIBUTIONS}")


def interval_pmf(M: int, distribution: str = "decreasing", power: float = 1.0) -> np.ndarray:
    """Exact P(t = k), k = 0..M-1, of the interval that `sample_interval` draws: F(k+1) - F(k)."""
    return np.diff(interval_cdf(np.arange(M + 1), M, distribution, power))  # (M,)


def bisect_interval(u: float, M: int, power: float = 1.0) -> int:
    """The official tf.while_loop: the largest integer k in [0, M) with F_p(k) <= u, by bisection.
    Invariant: F(k_low) <= u < F(k_up), true at the start because F(0) = 0 and F(M) = 1 > u."""
    k_low, k_up = 0, M
    while k_up - k_low > 1:
        k = (k_low + k_up) // 2
        if interval_cdf(k, M, "decreasing", power) > u:
            k_up = k
        else:
            k_low = k
    return k_low


def sample_interval(M: int, rng: np.random.Generator, distribution: str = "decreasing", power: float = 1.0) -> int:
    """Draw the interval t in {0..M-1} (raw frames between the two clip starts). P(t = k) = interval_pmf(M)[k]."""
    u = rng.random()  # U[0, 1)
    if distribution == "decreasing":
        if power == 1.0:
            t = math.floor(M * (1.0 - math.sqrt(1.0 - u)))  # closed-form inverse CDF, same as the bisection
        else:
            t = bisect_interval(u, M, power)
    elif distribution == "uniform":
        t = math.floor(M * u)
    elif distribution == "increasing":
        t = math.floor(M * math.sqrt(u))
    else:
        raise ValueError(f"unknown interval distribution {distribution!r}, expected one of {DISTRIBUTIONS}")
    return min(t, M - 1)  # u < 1 already gives t <= M-1; the min only guards against float rounding


class IntervalSampler:
    """Frame indices of CVRL's two clips of one video. sampler(num_frames, rng) -> (indices_1, indices_2),
    each an int64 array of `frames` indices start + stride * arange(frames), modulo num_frames."""

    def __init__(self, frames: int, stride: int, distribution: str = "decreasing", power: float = 1.0):
        if frames < 1 or stride < 1:
            raise ValueError(f"need frames >= 1 and stride >= 1, got frames={frames} stride={stride}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown interval distribution {distribution!r}, expected one of {DISTRIBUTIONS}")
        if distribution == "decreasing" and power <= 0:
            raise ValueError(f"the decreasing family needs power > 0, got {power}")
        self.frames, self.stride, self.distribution, self.power = frames, stride, distribution, power

    def __repr__(self):
        return (f"IntervalSampler(frames={self.frames}, stride={self.stride}, "
                f"distribution={self.distribution!r}, power={self.power})")

    def __call__(self, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        L = int(num_frames)
        if L < 1:
            raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
        span = (self.frames - 1) * self.stride  # raw frames from a clip's first frame to its last
        if L > span:
            M = L - span  # start frames for which the whole clip fits
            t = sample_interval(M, rng, self.distribution, self.power)
            a = int(rng.integers(M - t))  # U{0..M-t-1}
            b = a + t
            if rng.random() < 0.5:  # tf.random.shuffle((a, b))
                a, b = b, a
        else:
            # short video: the clip never fits, so both starts are uniform over the video and the clips loop
            a, b = int(rng.integers(L)), int(rng.integers(L))
        offsets = self.stride * np.arange(self.frames, dtype=np.int64)  # (frames,)
        return (a + offsets) % L, (b + offsets) % L


# ----------------------------------------------------------------------------- data: two clips per video, each with its spatial augmentation
# The temporal augmentation (above) picks the two clips' frames; the spatial augmentation (paper section 3.2)
# crops, flips and colours each clip, drawn once per clip and applied to all its frames: temporally consistent.

class PairSampler:
    """data.py's sampler interface (num_frames, fps, rng) -> [clip_1, clip_2] around IntervalSampler.
    interval='same' gives both views the same frames (the 'spatial augmentation only' ablation)."""

    def __init__(self, frames, stride, interval, power):
        self.same = interval == "same"
        self.sampler = IntervalSampler(frames, stride, "decreasing" if self.same else interval, power)

    def __call__(self, num_frames, fps, rng):
        a, b = self.sampler(num_frames, rng)
        return [a, a] if self.same else [a, b]


def augment_configs(cfg: Config):
    """The two views' spatial augmentations: CVRL's recipe, with the official code's asymmetric blur/solarize
    (view 1: blur p=1.0; view 2: blur p=0.1, solarize p=0.2 -- BYOL's; which clip gets which is random because the
    sampler shuffles the clips' order). 'none' only resizes the whole canvas (the 'temporal augmentation only'
    ablation)."""
    if cfg.spatial_aug == "none":
        plain = data.AugmentConfig(area=(1.0, 1.0), aspect=(cfg.canvas[1] / cfg.canvas[0],) * 2, flip_p=0.0,
                                   jitter_p=0.0, gray_p=0.0)
        return plain, plain
    common = dict(area=cfg.crop_area, aspect=(0.5, 2.0), flip_p=0.5, jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8,
                  gray_p=0.2, per_frame=cfg.spatial_aug == "per-frame")
    return (data.AugmentConfig(**common, blur_p=1.0),
            data.AugmentConfig(**common, blur_p=0.1, solarize_p=0.2))


# ----------------------------------------------------------------------------- encoder: R3D (3D ResNet)
# cvrl.md §3. Official: `official/vision/modeling/backbones/resnet_3d.py` and
# `official/vision/modeling/layers/nn_blocks_3d.py` (BottleneckBlock3D), configured by the experiment yaml
# `configs/experiments/cvrl_pretrain_k600_200ep.yaml`. (The *registered* default ResNet3D50 is a different network,
# with self-gating and other temporal kernels: the yaml is what makes it CVRL's.)
#
# R3D-50 is the "slow" pathway of SlowFast with two changes (paper Sec 3.2): the data layer samples every 2nd
# frame (done by IntervalSampler's stride, so it is not in the network) and conv1 has temporal kernel 5 and
# temporal stride 2. Temporal convolutions appear only in res4/res5 ("temporal kernel of each block's first
# conv 1,1,3,3 per stage"): the SlowFast paper found temporal convs in early layers hurt; its explanation is
# that with fast motion and a large temporal stride, frames are barely correlated within a small spatial
# receptive field. There is no temporal stride after conv1, so 16 input frames
# stay 8 frames deep all the way to the global pool.
#
#   stage  layer                                       blocks   output for 16x224^2 input
#   conv1  5x7^2, 64, stride (2,2,2) + BN + ReLU         -      8x112^2
#   pool1  max 1x3^2, stride (1,2,2)                     -      8x56^2
#   res2   [1x1^2,64  -> 1x3^2,64  -> 1x1^2,256 ]        3      8x56^2
#   res3   [1x1^2,128 -> 1x3^2,128 -> 1x1^2,512 ]        4      8x28^2
#   res4   [3x1^2,256 -> 1x3^2,256 -> 1x1^2,1024]        6      8x14^2
#   res5   [3x1^2,512 -> 1x3^2,512 -> 1x1^2,2048]        3      8x7^2
#   pool   global average over T x H x W                 -      2048
#
# 31.67M parameters (the README's "31.7M"), 45.5 GMACs per 16x224^2 clip (cvrl.md §3.4).
# Input layout (B, C, T, H, W), channels first as in every PyTorch 3D CNN; values in [0, 1], no mean/std
# normalisation (the official pipeline has none, cvrl.md §2.1).
#
# Padding: PyTorch pads symmetrically, TF 'SAME' asymmetrically for stride 2 (e.g. 1 before, 2 after for kernel 5
# on T=16). Output shapes agree; it only matters if you load TF weights (cvrl.md §3.5).
# BatchNorm: Keras momentum 0.9 -> PyTorch momentum 0.1 (PyTorch's momentum weighs the NEW batch), eps 1e-5.
# The official run uses sync BN; the training section converts with nn.SyncBatchNorm.convert_sync_batchnorm
# under DDP, so here it is plain BatchNorm3d.


def trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    """In place: Normal(0, std) truncated to [-2 std, 2 std] (TF's truncated_normal), by inverting the CDF:
    u ~ U(Phi(-2), Phi(2)), w = Phi^{-1}(u) std = sqrt(2) erfinv(2u - 1) std. Three passes over the tensor;
    nn.init.trunc_normal_ (torch 2.14) uses a rejection loop that took ~8 s for R3D-50 on a 2-core CPU."""
    edge = math.erf(-2 / math.sqrt(2))  # 2 Phi(-2) - 1
    with torch.no_grad():
        return w.uniform_(edge, -edge).erfinv_().mul_(std * math.sqrt(2))


def conv3d(cin: int, cout: int, kernel, stride=1) -> nn.Conv3d:
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    padding = tuple(k // 2 for k in kernel)  # 'SAME' output size for odd kernels
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)  # no bias: BN follows


def bn3d(c: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(c, momentum=0.1, eps=1e-5)


class Bottleneck(nn.Module):
    """BottleneckBlock3D: kt x 1 x 1 conv -> 1 x 3 x 3 conv (carries the spatial stride) -> 1 x 1 x 1 conv to 4w."""
    expansion = 4

    def __init__(self, cin: int, width: int, kt: int, spatial_stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv3d(cin, width, (kt, 1, 1)), bn3d(width)
        # ResNet v1.5: the stride sits on the 3x3 conv, not on the first 1x1 (which would discard 3/4 of the input)
        self.conv2, self.bn2 = conv3d(width, width, (1, 3, 3), stride=(1, spatial_stride, spatial_stride)), bn3d(width)
        self.conv3, self.bn3 = conv3d(width, cout, 1), bn3d(cout)
        # Projection shortcut only when the channel count changes (the first block of each stage); identity otherwise.
        # In this network a stride always comes with a channel change, so identity never needs a stride.
        self.shortcut = None
        if cin != cout:
            self.shortcut = nn.Sequential(conv3d(cin, cout, 1, stride=(1, spatial_stride, spatial_stride)), bn3d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # no ReLU before the add
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class BasicBlock(nn.Module):
    """Two-conv block for the small variants (not in the paper): kt x 3 x 3 conv (carries the spatial stride)
    -> 1 x 3 x 3 conv. The temporal kernel goes in the first conv, as in the bottleneck, so 'kt = 1,1,3,3 per
    stage' means the same thing in both block types."""
    expansion = 1

    def __init__(self, cin: int, width: int, kt: int, spatial_stride: int):
        super().__init__()
        cout = width
        self.conv1, self.bn1 = conv3d(cin, width, (kt, 3, 3), stride=(1, spatial_stride, spatial_stride)), bn3d(width)
        self.conv2, self.bn2 = conv3d(width, width, (1, 3, 3)), bn3d(width)
        self.shortcut = None
        if cin != cout or spatial_stride != 1:
            self.shortcut = nn.Sequential(conv3d(cin, cout, 1, stride=(1, spatial_stride, spatial_stride)), bn3d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class R3D(nn.Module):
    """3D ResNet, input (B, C, T, H, W) -> pooled feature (B, feature_dim)."""

    def __init__(self, blocks: tuple, width: int = 64, bottleneck: bool = True,
                 temporal_kernels: tuple = (1, 1, 3, 3), stem_kernel: tuple = (5, 7, 7),
                 stem_stride: tuple = (2, 2, 2), in_channels: int = 3):
        super().__init__()
        Block = Bottleneck if bottleneck else BasicBlock
        self.stem = nn.Sequential(
            conv3d(in_channels, width, stem_kernel, stride=stem_stride), bn3d(width), nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages, cin = [], width
        for i, (num_blocks, kt) in enumerate(zip(blocks, temporal_kernels)):
            w = width * 2 ** i  # 64, 128, 256, 512 for the paper's network
            layers = []
            for j in range(num_blocks):
                spatial_stride = 2 if (i > 0 and j == 0) else 1  # downsample at the start of res3, res4, res5
                layers.append(Block(cin, w, kt, spatial_stride))
                cin = w * Block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = cin  # 2048 for R3D-50, 512 for R3D-18
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                # Keras VarianceScaling() (scale 1, fan_in, truncated normal) as in the official code; NOT He init,
                # which would use scale 2. Keras truncates at 2 std and then divides by 0.8796 (the std of a
                # standard normal truncated to [-2, 2]) so that the weights' actual std is sqrt(1/fan_in).
                fan_in = m.in_channels * math.prod(m.kernel_size)
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                trunc_normal_(m.weight, std)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)  # gamma = 1 everywhere; the official code does not zero-init the last BN
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)  # (B, 64, T/2, H/4, W/4) for the paper's stem
        x = self.stages(x)  # (B, feature_dim, T/2, H/32, W/32)
        return reduce(x, "b c t h w -> b c", "mean")  # global average pool -> (B, feature_dim)


# name -> R3D kwargs. Parameter counts (backbone only): r3d50 31.67M (paper), r3d101 59.58M, r3d18 20.06M, tiny 0.50M.
ARCHS = {
    "r3d50": dict(blocks=(3, 4, 6, 3), width=64, bottleneck=True),  # the paper's encoder
    "r3d101": dict(blocks=(3, 4, 23, 3), width=64, bottleneck=True),
    # Basic blocks with the same stem and temporal kernels; not in the paper, here for smaller GPUs
    # (tensorflow/models#10671 asks for exactly this).
    "r3d18": dict(blocks=(2, 2, 2, 2), width=64, bottleneck=False),
    # For CPU runs on 48x48 synthetic clips of 8 frames. The paper's stem (kernel 5, temporal stride 2) would
    # leave 4 frames and see 5 of 8 input frames at once; the tiny stem keeps all 8 frames (temporal stride 1,
    # kernel 3) so res4/res5's temporal convs still have time to work with. 48 -> 24 (stem) -> 12 (pool)
    # -> 12, 6, 3, 2 through the stages; feature 128.
    "tiny": dict(blocks=(1, 1, 1, 1), width=16, bottleneck=False, stem_kernel=(3, 5, 5), stem_stride=(1, 2, 2)),
}


def build_encoder(arch: str) -> R3D:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}, expected one of {sorted(ARCHS)}")
    return R3D(**ARCHS[arch])


# ----------------------------------------------------------------------------- projection head
# cvrl.md §4.1. Official: `official/projects/video_ssl/modeling/video_ssl_model.py` (VideoSSLModel).
# The pooled feature h (not L2-normalised) goes through `layers` hidden layers Dense(hidden, bias) -> BN -> ReLU,
# then Dense(out, bias) with no BN and no activation; the loss L2-normalises the output z. Only the encoder is
# kept after pretraining: as in SimCLR, h is a better representation than z, because z is trained to be
# invariant to the augmentations and discards information (colour, exact timing) a downstream task may need.
# Head BN: Keras momentum 0.997 -> PyTorch 0.003 (a very slow running average; only used at eval time), eps 1e-5.
# Dense init: Keras' default glorot_uniform with zero bias (the official code passes no initializer to Dense).
# For R3D-50: 2048 -> 2048 -> 2048 -> 2048 -> 128, 12.9M parameters. For the tiny encoder (feature 128) use a
# smaller `hidden` (e.g. 512), or the head would be far larger than the encoder.


class ProjectionHead(nn.Module):
    """MLP head: (B, in_dim) -> (B, out)."""

    def __init__(self, in_dim: int, hidden: int = 2048, out: int = 128, layers: int = 3):
        super().__init__()
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden, momentum=0.003, eps=1e-5), nn.ReLU(inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, out))
        self.mlp = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # = glorot_uniform
                nn.init.zeros_(m.bias)

    def forward(self, h):
        return self.mlp(h)


# ----------------------------------------------------------------------------- loss: NT-Xent (InfoNCE)
# cvrl.md §4.3. Official: `official/projects/video_ssl/losses/losses.py` (contrastive_loss), which is SimCLR's TF
# loss. The batch holds B videos per process, z1[i] and z2[i] are the embeddings of the two clips of video i.
#
# Paper (as restated in cvrl.md §4.3), with sim(u, v) = u.v / (|u||v|), temperature tau = 0.1, N = W*B videos and
# so 2N clips in the global batch:
#     L_i = -log( exp(sim(z_i, z'_i)/tau) / sum_{k != i}^{2N} exp(sim(z_i, z_k)/tau) )
# Every clip is an anchor; its positive is the other clip of the same video, its negatives are the other 2N-2
# clips (2046 at N = 1024). The official code writes this as two (2N)-way classifications. For the anchors of
# view a, the logits are [z_a . z_b_all, z_a . z_a_all] (2 * N_global columns), the correct
# class is the same video's view-b clip, and the anchor itself is removed from the softmax by subtracting 1e9
# from its self-similarity; the same for view b. Then
#     loss = loss_a + loss_b,   loss_a = mean over view-a anchors of L_i,   loss_b = the same for view b,
# the SUM of the two directions (we keep the official sum). That is (1/N) sum_{all 2N anchors} L_i, i.e. 2x the
# mean over the 2N anchors that SimCLR's paper writes (cvrl.md quotes CVRL's paper as L = (1/N) sum_i L_i without
# saying whether i runs over N or 2N anchors; over 2N it is exactly the official loss). The factor 2 only
# rescales the gradient: under SGD it is the same as 2x the lr with half the weight decay; under LARS the trust
# ratio cancels it except in the non-adapted BN/bias group.
#
# Distributed: each process computes logits for its LOCAL B anchors against the GLOBAL set of W*B clips per view
# (local rows x global columns), so the positive of local anchor i sits in column rank*B + i (the label offset
# that Spijkervet/SimCLR#30 and solo-learn#206 got wrong). The gather must be differentiable: a clip on rank r is
# a negative in every other rank's loss, and those losses' gradients must flow back to rank r's encoder.
# torch.distributed.nn.functional.all_gather does that: its backward SUMs the incoming gradients over ranks
# (a reduce-scatter), like the official all_reduce(SUM)-based `tpu_cross_replica_concat`.
#
# Gradient scale. Let L_r be rank r's loss (a mean over its B local anchors per view) and
# L = (1/W) sum_r L_r, which is exactly the loss of one process on the concatenated global batch. Rank r's
# embeddings z_r receive sum_r' dL_r'/dz_r through the SUM-backward gather, so rank r's parameter gradient is
# g_r = sum_r' dL_r'/dz_r . dz_r/dtheta. DDP averages: (1/W) sum_r g_r = sum_r dL/dz_r . dz_r/dtheta = dL/dtheta.
# So differentiable gather + per-rank mean + DDP averaging = single-process training on the whole batch (a test
# checks this with 2 processes). A no-grad gather with the local slice put back (open_clip's non-default mode)
# drops the cross-rank terms and gives a different, wrong gradient; a gather whose backward returns only the
# own slice without summing has the same bug (lightly#1528).
# The official TF step does not divide by the number of replicas and TF sums replica gradients, so its update is
# R times ours at the same lr (cvrl.md §4.5); see the optimizer section.

LARGE_NUM = 1e9  # the official code's mask value


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent as the official TF code: z1, z2 (B, D) local embeddings of the two views -> scalar loss_a + loss_b."""
    B = z1.shape[0]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    # In fp32 even under autocast: 1e9 overflows fp16 (then 0 * inf = nan in the mask), and bf16's 3 significant
    # digits are too coarse for cosines divided by 0.1. fp64 inputs stay fp64 (tests).
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = F.normalize(z1.to(dtype), dim=1)  # (B, D), unit norm: dot products are cosines
        z2 = F.normalize(z2.to(dtype), dim=1)
        z1_all = all_gather_with_grad(z1)  # (W*B, D)
        z2_all = all_gather_with_grad(z2)  # (W*B, D)
        labels = rank * B + torch.arange(B, device=z1.device)  # (B,) column of each anchor's positive / self
        self_mask = F.one_hot(labels, world * B).to(dtype)  # (B, W*B)
        logits_aa = z1 @ z1_all.T / temperature - self_mask * LARGE_NUM  # (B, W*B), an anchor is not its own negative
        logits_bb = z2 @ z2_all.T / temperature - self_mask * LARGE_NUM
        logits_ab = z1 @ z2_all.T / temperature  # (B, W*B), the positive is on the (offset) diagonal
        logits_ba = z2 @ z1_all.T / temperature
        loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels)  # (B, 2*W*B) logits
        loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels)
    return loss_a + loss_b


# ----------------------------------------------------------------------------- optimizer and learning-rate schedule
# cvrl.md §4.4, §5.1. Official: `configs/experiments/cvrl_pretrain_k600_200ep.yaml`, `tasks/pretrain.py`.
# - SGD, momentum 0.9, nesterov False. The official config does NOT use LARS (the paper may say LARS; the code
#   says SGD). LARS is here as a flag because it is what most PyTorch video SimCLR recipes use (SlowFast,
#   Feichtenhofer et al. 2021) and because it is insensitive to the gradient-scale factors discussed above.
# - Base lr 0.32 for a global batch of 1024 videos (2048 clips), scaled linearly with the global batch:
#   lr = 0.32 * global_batch / 1024. Caveat (cvrl.md §4.5): the TF step sums gradients over its R replicas
#   without dividing, so the official update corresponds to lr 0.32 * R under DDP's gradient averaging, and R is
#   not recorded anywhere. Treat the lr as something to tune.
# - Weight decay 1e-6 on conv and dense kernels only (official: 1e-6 * sum ||w||^2 / 2 over variables named
#   'kernel'), i.e. tensors with ndim > 1. BN gammas/betas and biases are not decayed: decaying a BN gamma
#   changes nothing about what the layer can represent but shrinks its scale for no reason.
# - Linear warmup from 0 for 5 epochs, then cosine to 0 at the last step (training.warmup_cosine).
# Small differences from the TF code we accept: Keras SGD keeps lr inside the momentum buffer (v = m v - lr g),
# PyTorch outside (v = m v + g, step -lr v), which differ only while the lr changes; and Model Garden's cosine runs
# over the global step (so at the end of warmup the lr is already cos-decayed by ~0.2%), ours starts at the end
# of warmup, so lr = base exactly there.


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017), as SimCLR's TF LARSOptimizer:
    for each parameter tensor w with gradient g (weight decay added first),
        trust = eta * ||w|| / ||g||   (1 if either norm is 0),   v <- m v + lr * trust * g,   w <- w - v.
    The step length of a layer is then about lr * eta * ||w|| regardless of how large its gradient is, which
    makes the large-batch lr far less sensitive to the gradient scale. Groups with lars_adapt=False (BN, biases)
    skip the trust ratio, as in SimCLR and Feichtenhofer et al. 2021 (cvrl.md §5.2): a bias or BN beta can sit
    near zero, and a step proportional to ||w|| would freeze it there."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        # The whole group at once with torch._foreach_* ops: each is one multi-tensor kernel on a GPU (a handful of
        # launches per group instead of a dozen per tensor) and, on the CPU, exactly the per-tensor op in a loop, so
        # the numbers are those of the per-tensor loop in the docstring's formula (a test checks it bit for bit).
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            grads = [w.grad for w in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])  # g + wd * w
            if group["lars_adapt"]:
                w_norm = torch.stack(torch._foreach_norm(params))  # (n,) one norm per tensor
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coefficient"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))  # (n,)
                # g_i times its own lr * trust_i. torch's multi-tensor kernels take per-tensor scalars only as host
                # numbers (reading these would be a sync), so this one op runs tensor by tensor on a GPU
                steps = torch._foreach_mul(grads, list((group["lr"] * trust).unbind()))
            else:
                steps = torch._foreach_mul(grads, group["lr"])
            for w in params:
                if "momentum_buffer" not in self.state[w]:
                    self.state[w]["momentum_buffer"] = torch.zeros_like(w)
            v = [self.state[w]["momentum_buffer"] for w in params]
            torch._foreach_mul_(v, group["momentum"])  # v <- m v + lr * trust * g
            torch._foreach_add_(v, steps)
            torch._foreach_sub_(params, v)  # w <- w - v
        return loss


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9,
                        optimizer: str = "sgd") -> torch.optim.Optimizer:
    """Two param groups: conv/linear weights (ndim > 1) with weight decay, everything else (BN, biases) without."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    if optimizer == "sgd":
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        # On a GPU, fused: the whole update (weight decay, momentum, step) in a few multi-tensor kernels. On the CPU,
        # torch's default (a per-tensor loop), whose numbers every CPU run so far was trained with.
        fused = True if decay and decay[0].device.type == "cuda" else None
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False, fused=fused)
    if optimizer == "lars":
        groups = [dict(params=decay, weight_decay=weight_decay, lars_adapt=True),
                  dict(params=no_decay, weight_decay=0.0, lars_adapt=False)]
        return LARS(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {optimizer!r}, expected 'sgd' or 'lars'")


# ----------------------------------------------------------------------------- config
# Defaults are a CPU-sized run on the built-in synthetic videos (`python cvrl.py`, 10-12 min on 2 cores). The
# paper's recipe is one command line, in the module docstring.

@dataclass
class Config:
    # data
    dataset: str = "auto"           # auto (from --data) | synthetic | folder | unlabeled | ucf101 | hmdb51 | kinetics
    data: str | None = None         # any folder of videos; none: the synthetic videos, made once in the cache
    annotations: str | None = None  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int = 1                   # UCF101/HMDB51 split number (1-3)
    data_fraction: float = 1.0      # use this class-stratified fraction of the training videos (data-size study)
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # the synthetic videos: no trail, scene or camera
    canvas: tuple = (48, 48)        # decode size (H, W): frames are scaled to cover it, then centre-cropped
    # clips: the temporal augmentation
    frames: int = 8                 # frames per clip (paper: 16)
    stride: int = 4                 # frames between sampled frames (paper: 2 at 25 fps; 4 here: see the note below)
    interval: str = "decreasing"    # distribution of the interval between the two clips: decreasing | uniform | increasing | same
    power: float = 1.0              # decreasing family: P(t) ∝ 1 - (t/M)^power (1 = the paper's default, -t + c)
    # spatial augmentation
    size: int = 32                  # crop size fed to the network (paper: 224; 32 here: see the note below)
    spatial_aug: str = "consistent"  # consistent (per clip) | per-frame (the paper's ablation) | none (resize only)
    crop_area: tuple = (0.3, 1.0)   # random resized crop area range (paper/official: 0.3-1)
    # model
    arch: str = "tiny"              # encoder: tiny (CPU), r3d18, r3d50 (paper), r3d101
    head_hidden: int = 512          # MLP head hidden width (paper: 2048)
    head_layers: int = 3            # MLP head hidden layers (paper: 3)
    head_out: int = 128             # embedding size (paper: 128)
    temperature: float = 0.2        # InfoNCE temperature (paper: 0.1; 0.2 for the synthetic default, see below)
    # optimisation
    epochs: int = 120               # passes over the training videos (paper: 200 or 800 on Kinetics)
    batch_size: int = 64            # videos per process per step (2 clips each); global = batch_size * processes
    optimizer: str = "sgd"          # sgd (official config) | lars
    lr: float = 3.2                 # learning rate at a global batch of 1024 videos, scaled linearly (official: 0.32; see README)
    warmup_epochs: float = 2.0      # linear warmup (official: 5 of 200)
    weight_decay: float = 1e-6      # on conv/linear weights only (official: 1e-6)
    momentum: float = 0.9
    # machinery
    device: str = "auto"            # auto | cpu | cuda
    workers: int = 2                # DataLoader worker processes per GPU/process (decode on the CPU)
    compile: bool = False           # torch.compile encoder + head + loss (GPU: faster after a minute of compiling)
    amp: str = "auto"               # auto (bf16 on GPU, off on CPU) | bf16 | off
    seed: int = 0
    out: str = "runs/cvrl"          # output dir: checkpoint.pt, config.json, log.jsonl, skipped.txt
    log_every: int = 10             # steps between log lines
    max_steps: int = 0              # stop after this many steps in total (0 = no limit; for tests and quick looks)


# Three defaults differ from the paper for the synthetic videos, because with the paper's values `python cvrl.py` did
# not beat random weights (the measurements: docs/results.md, "CVRL's CPU defaults"):
#   stride 4 (paper: 2). The paper's clip, 16 frames at stride 2 of 25-fps Kinetics, spans 1.2 s: a good part of an
#     action. Our synthetic videos have 48 frames; 8 frames at stride 2 span 15, in which a shape moves only 4-9
#     pixels. At stride 4 a clip spans 29 frames.
#   temperature 0.2 (paper: 0.1). 8 classes of plain shapes make most negatives in a batch near-duplicates of the
#     positive; a sharper softmax spends the model's capacity telling them apart by size and start position, which
#     is not what the probe asks for.
#   32-px crops of a 48-px canvas, 120 epochs (840 steps): a 32-px step costs half as much as a 48-px one, so the
#     same minutes buy 3x the steps, and the run converges where a shorter one was chaotic.
# The paper-scale command lines in the docstring pass --stride 2 --temperature 0.1.

# Changing these between a checkpoint and a resume would load weights into a different network: refused.
ARCH_KEYS = ("arch", "head_hidden", "head_layers", "head_out")


def parse_args(argv=None) -> Config:
    cfg = training.parse_config(Config, argv, "CVRL pretraining. " + __doc__.split("\n\n")[0])
    cfg = data.decide_dataset(cfg)  # --dataset auto: synthetic, a labelled folder or unlabeled videos, from --data
    for name, value, allowed in [("arch", cfg.arch, sorted(ARCHS)), ("interval", cfg.interval, DISTRIBUTIONS + ("same",)),
                                 ("spatial-aug", cfg.spatial_aug, ("consistent", "per-frame", "none")),
                                 ("optimizer", cfg.optimizer, ("sgd", "lars"))]:
        if value not in allowed:
            raise SystemExit(f"error: --{name} must be one of {list(allowed)}, got {value!r}")
    return cfg


# ----------------------------------------------------------------------------- one training step

def forward_loss(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, temperature: float, amp: bool):
    """The forward half of a step: both views of every video through encoder + head in ONE pass (so every BN batch
    holds both views, as the official code's [clip1 of all videos; clip2 of all videos]), then the NT-Xent loss.
    x1, x2: (B, C, T, S, S) float views. Returns (z (2B, head_out), loss).

    It is a function of its own so that --compile compiles it whole, `torch.compile(forward_loss)`: the network and the
    loss in one graph, so inductor fuses the head's and the loss's small ops too, not only the encoder's. `model` may be
    the DDP-wrapped network (torchrun): DDP's own forward then runs eagerly, dynamo compiles the module it wraps (its
    DDPOptimizer cuts the graph at the gradient buckets, so the all-reduces still overlap the backward) and the loss
    as a graph of its own. The gather of the embeddings across processes stays outside the compiled graphs
    (all_gather_with_grad says why)."""
    x = torch.cat([x1, x2])  # (2B, C, T, S, S)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        z = model(x)  # (2B, head_out)
        B = x1.shape[0]
        loss = nt_xent(z[:B], z[B:], temperature)
    return z, loss


def train_step(cfg: Config, model: nn.Module, optimizer, video: torch.Tensor, step: int, lr: float,
               aug: tuple, rank: int = 0, loss_fn=forward_loss) -> dict:
    """One CVRL step on a batch of decoded videos, uint8 (B, 2, T, H, W, 3) on the device: both clips of every video
    are augmented (their own spatial augmentation, drawn from a generator seeded by the step and process, so a
    resumed run repeats it), embedded and scored by `loss_fn` (forward_loss, or its torch.compile'd version), and the
    NT-Xent loss pulls the two clips of each video together. `model` is encoder + head (inside DDP under torchrun).
    Returns log values as tensors on the device: nothing here waits for the GPU."""
    g = torch.Generator().manual_seed(training.step_seed(cfg.seed, step, rank))
    x1 = data.augment(data.to_bcthw(video[:, 0]), cfg.size, aug[0], g)  # (B, C, T, S, S) in [0, 1]
    x2 = data.augment(data.to_bcthw(video[:, 1]), cfg.size, aug[1], g)
    for group in optimizer.param_groups:
        group["lr"] = lr
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and x1.device.type == "cuda")
    z, loss = loss_fn(model, x1, x2, cfg.temperature, use_amp)  # (2B, head_out), scalar
    loss_avg = loss.detach().clone()  # every process logs the same value
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_avg, op=dist.ReduceOp.AVG)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))  # measure, don't clip
    optimizer.step()
    with torch.no_grad():  # instance discrimination accuracy: is the other clip the nearest of the batch?
        B = x1.shape[0]
        zn = F.normalize(z.float(), dim=1)
        acc = (zn[:B] @ zn[B:].T).argmax(1).eq(torch.arange(B, device=z.device)).float().mean()
    return dict(loss=loss_avg, contrastive_acc=acc, grad_norm=grad_norm)


# ----------------------------------------------------------------------------- the model that eval_linear.py loads

class Backbone(nn.Module):
    """What a linear probe sees: float clips in [0, 1], (B, C, T, H, W) -> pooled encoder feature (B, D).
    CVRL applies no mean/std normalisation anywhere (official code), so neither do we."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.encoder = build_encoder(cfg["arch"])
        self.feature_dim = self.encoder.feature_dim

    def forward(self, x):
        return self.encoder(x)


def build_backbone(cfg: dict) -> nn.Module:
    """eval_linear.py's entry point: the network a checkpoint's "backbone" state dict belongs to."""
    return Backbone(cfg)


# ----------------------------------------------------------------------------- training

def train(cfg: Config):
    run, ckpt = training.start(cfg, "cvrl")
    device = run.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # data: two clips per video (PairSampler), decoded in the loader's workers
    videos, cfg, skipped = training.training_videos(cfg, run, lambda new, old: (
        f": {2 * new - 2} negatives per clip instead of {2 * old - 2}, an easier contrastive task"))
    dataset = data.VideoDataset(videos, PairSampler(cfg.frames, cfg.stride, cfg.interval, cfg.power),
                                canvas=cfg.canvas, resample=True, min_frames=cfg.frames)
    loader = data.make_loader(dataset, cfg.batch_size, cfg.workers, shuffle=True, drop_last=True, seed=cfg.seed,
                              rank=run.rank, world_size=run.world)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    global_batch = cfg.batch_size * run.world
    lr = cfg.lr * global_batch / 1024

    # model: encoder + MLP head; BN statistics over the global batch (official)
    encoder = build_encoder(cfg.arch)
    model = nn.Sequential(encoder, ProjectionHead(encoder.feature_dim, cfg.head_hidden, cfg.head_out, cfg.head_layers))
    if run.world > 1:
        model = sync_batchnorm(model, device)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = configure_optimizer(model, lr, cfg.weight_decay, cfg.momentum, cfg.optimizer)
    start_step = 0
    if ckpt is not None:  # resume: same schedule, same data order, from the step it stopped at
        training.check_resume_config(ckpt["config"], cfg, ARCH_KEYS)
        training.note_data_change(run, ckpt, len(videos), steps_per_epoch, total_steps)
        model[0].load_state_dict({k.removeprefix("encoder."): v for k, v in ckpt["backbone"].items()})
        model[1].load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "fused" in optimizer.defaults:  # SGD: loading also brought back the saved run's `fused`, a choice of its device
            for group in optimizer.param_groups:
                group["fused"] = optimizer.defaults["fused"]
        start_step, skipped = ckpt["step"], list(ckpt.get("skipped", [])) or skipped
        run.print(f"resumed from {run.checkpoint_path} at step {start_step} (epoch {start_step // steps_per_epoch})")
    ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if run.world > 1 else model
    # --compile: encoder, head and loss as one compiled function (forward_loss says what that means under DDP). The
    # model itself stays uncompiled, so its state-dict keys (and the checkpoint) are the same with and without.
    loss_fn = torch.compile(forward_loss) if cfg.compile else forward_loss
    labels = f"{len(videos.classes)} classes" if videos.classes else "no labels"
    run.print(f"CVRL | {videos.name}: {len(videos)} videos, {labels} | encoder {cfg.arch} "
              f"({sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params) | {run.world} process(es) on "
              f"{device} | global batch {global_batch} videos ({2 * global_batch} clips) | lr {lr:.4g} | "
              f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs")
    training.write_config(run, asdict(cfg))

    advice = "a lower --lr, --optimizer lars, or --amp off"

    def checkpoint(step):
        mean.check_finite(step, advice)  # never save weights that a NaN has reached
        if run.master:
            training.save_checkpoint(run.checkpoint_path, {
                "method": "cvrl", "config": asdict(cfg), "step": step, "epoch": step / steps_per_epoch,
                # keys of build_backbone(config): what eval_linear.py loads
                "backbone": {"encoder." + k: v for k, v in training.unwrap(model[0]).state_dict().items()},
                "head": model[1].state_dict(), "optimizer": optimizer.state_dict(), "skipped": sorted(set(skipped)),
                "num_videos": len(videos), "steps_per_epoch": steps_per_epoch, "versions": {"torch": str(torch.__version__)}})
        run.barrier()

    # the loop: a step per batch, a log line every --log-every steps, a checkpoint at every epoch's end
    aug = augment_configs(cfg)
    # Prefetcher: on a GPU the next batch's copy to the device runs on a side stream while this step computes
    steps = training.Steps(training.Prefetcher(loader, device), start_step, total_steps, steps_per_epoch, cfg.max_steps,
                           cfg.batch_size)
    mean = training.Mean(start_step)
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not run.master, unit="step", dynamic_ncols=True)
    with bar, training.interruptible(run, lambda: checkpoint(steps.step)):
        for step, batch in steps:
            training.report_bad(batch, skipped, run)
            video = batch["video"]  # (B, 2, T, H, W, 3) uint8 on the device (Prefetcher): two clips per video
            mean.add(train_step(cfg, ddp_model, optimizer, video, step, training.warmup_cosine(step, total_steps, warmup_steps, lr),
                                aug, run.rank, loss_fn))
            bar.update(1)
            if steps.log_due(cfg.log_every):
                mean.check_finite(step + 1, advice)
                n = mean.n
                rec = dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), **mean.read(),
                           lr=optimizer.param_groups[0]["lr"], **steps.timing(2 * global_batch, n),
                           skipped=len(set(skipped)))
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['contrastive_acc']:.2f}", lr=f"{rec['lr']:.3g}",
                                clips_s=f"{rec['clips_per_s']:.0f}", wait=f"{rec['data_wait']:.0%}")
                run.log(rec)
            if steps.epoch_end:
                checkpoint(step + 1)
    ckpt_arg, flags = training.quote(run.checkpoint_path), f" --dataset {cfg.dataset}" if cfg.dataset != "synthetic" else ""
    look = (f"look: python scripts/neighbours.py --ckpt {ckpt_arg} --out {training.quote(run.out / 'neighbours.png')}"
            if cfg.dataset == "unlabeled" else  # nothing to probe with: what the features find similar instead
            f"evaluate: python eval_linear.py --ckpt {ckpt_arg}{flags}")
    training.finish(run, skipped, steps.step, look)



# ----------------------------------------------------------------------------- appendix: across processes (torchrun)
# The two pieces that make several processes train as one on the global batch: batch norm with global statistics
# and a gather of the embeddings that gradients flow back through (the loss section says why both matter).

# The official code uses sync BN (`use_sync_bn: true`): BN statistics over the global batch, in the backbone and in
# the head. It matters for contrastive learning: with per-process statistics a network can tell which process a
# clip came from and use that to cheat on the negatives (SimCLR's "global BN" argument). On GPUs we use PyTorch's
# nn.SyncBatchNorm; it refuses CPU tensors, so for CPU process groups (gloo: tests, laptops) the same computation
# is written out here with a differentiable all-reduce. Both give exactly single-process BN on the concatenated
# batch (tests/ddp_check.py checks it, gradients included).

class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are summed over all processes (CPU twin of nn.SyncBatchNorm)."""

    def _check_input_dim(self, x):
        pass  # used for 2-d (head) and 5-d (encoder) inputs alike

    def forward(self, x):
        if not self.training:
            return super().forward(x)  # running statistics, no communication
        from torch.distributed.nn.functional import all_reduce  # differentiable: backward all-reduces the gradients
        dims = [0] + list(range(2, x.dim()))  # every axis but channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            n = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype))  # global count per channel
            mean = all_reduce(x.sum(dims)) / n  # (C,) two passes: no E[x^2] - E[x]^2 cancellation
            var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BN normalises with
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)  # unbiased, as PyTorch's BN
            self.num_batches_tracked += 1
        return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape) \
            + self.bias.view(shape)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm computes global-batch statistics: nn.SyncBatchNorm on GPU, GlobalBatchNorm on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            ref = next(iter(child.state_dict().values()))  # keep the layer's dtype and device
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                 device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            sync_batchnorm(child, device)
    return model


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each of W processes -> (W*B, D), rank-major, differentiable. Identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x  # (torch.compile reads these as constants: one process compiles the loss without a break)
    return _all_gather_eager(x)


# Outside torch.compile's graph, always. torch 2.14's differentiable collectives (torch.distributed.nn.functional)
# raise "not supported under torch.compile" when traced; the traceable ones (_functional_collectives) have no
# gradient except a private *_autograd variant whose backward (a reduce-scatter on NCCL) we could not test without
# GPUs. The gather moves 2 x B x 128 numbers per step, so running it eagerly, between the compiled network and the
# compiled logits, costs a graph break and nothing measurable.
@torch.compiler.disable
def _all_gather_eager(x: torch.Tensor) -> torch.Tensor:
    # torch 2.14 marks this function deprecated and suggests _functional_collectives.all_gather_single, which does
    # NOT propagate gradients (only its private *_autograd twin does). That would silently give the bug above,
    # so we keep the public differentiable one and silence the warning. .contiguous(): pytorch#120386.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = torch.distributed.nn.functional.all_gather(x.contiguous())  # tuple of W tensors (B, D)
    return torch.cat(parts, dim=0)  # (W*B, D)


if __name__ == "__main__":
    training.command(lambda: train(parse_args()))
