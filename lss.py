"""
LSS: Language-based action concept spaces for video self-supervised learning, in one file.

Ranasinghe & Ryoo, "Language-based Action Concept Spaces Improve Video Self-Supervised Learning", NeurIPS 2023,
arXiv 2307.10922. The idea: start from an *image* CLIP, give its visual tower temporal attention, and train it on
unlabeled videos by self-distillation (an EMA teacher and a student, as in DINO/SVT). Instead of DINO's learned
prototype head, both networks project their features onto fixed "action concept" vectors computed once by the
frozen CLIP text tower: one space from action names (category space) and one from LLM-written descriptions of those
actions (description space). Two losses act in these spaces: concept distillation (student matches the teacher's
distribution over action names across views) and concept alignment (the student's distribution over descriptions,
summed per action, matches the teacher's distribution over action names).

What is known and what is reconstructed. There is no official code, and only the abstract and the Fig. 1 caption of
the paper could be read (see docs/lss.md section 0). Verified: image-CLIP initialisation of a space-time
backbone, self-distillation, projection onto frozen text "concept" vectors, the two objectives, three benchmarks.
Everything else here is a RECONSTRUCTION, chosen to be as close as possible to the code LSS builds on (SVT for the
backbone/views/EMA, DINO for centring and multi-view pairing, MUST for the uniform prior, openai/CLIP for the model):
  - the divided space-time block and its init (SVT's TimeSformer mapped onto CLIP's layer names);
  - the per-frame CLS mode (our default proposal; SVT's time-averaged CLS is available as cls_mode='shared');
  - every loss formula, the temperatures, the centre, the uniform prior and its weight;
  - the prompt templates and the description set.
Each such place says so in a comment.

Layout, in the order the method is learnt: CLIP's blocks (plain PyTorch, OpenAI state-dict layout) -> the video
ViT (divided space-time attention) -> concept spaces -> the three losses -> views -> one training step -> config ->
the training loop -> zero-shot evaluation; appendix: CLIP's BPE tokenizer and weight loading. Tensor layout at the
video model's boundary is (B, T, C, H, W), CLIP-normalised floats.

Training, as reconstructed: every video gives 2 global views (the whole window, 8 frames, 224 px) and L local views
(short windows, fewer frames, 96 px; none in the 32-px default run); the EMA teacher embeds the globals, the student
all views, one backbone pass per view shape; both project onto the frozen concept vectors; L = L_CD + lambda_ca L_CA
+ lambda_up L_UP; AdamW with SVT's lr/weight-decay/momentum schedules. The checkpoint's "backbone" is the TEACHER
(SVT evaluates the teacher); it also carries the student, optimizer, centre and the text tower, so a run resumes
exactly and zero-shot evaluation can embed any dataset's class names later. In a short run the EMA teacher trails
the student, so we report the student (eval_linear.py --network student; both are logged).

Where no OpenAI weights are at hand, the start is a tiny CLIP pretrained here on captioned synthetic stills
(scripts/pretrain_clip.py, run once by --init tiny, the default, and cached); --init random is the collapse.

Commands
    python lss.py                                          # CPU: the tiny CLIP adapted to the synthetic videos
    python lss.py zero-shot --ckpt runs/lss/checkpoint.pt --network student  # name the test videos by their classes
    python eval_linear.py --ckpt runs/lss/checkpoint.pt --network student    # linear probe (CLS feature)
    torchrun --standalone --nproc_per_node=2 lss.py --out runs/lss_ddp     # 2 processes (gloo; NCCL on GPUs)
    python lss.py --data ~/videos --out runs/lss_own       # your unlabeled videos (concepts: UCF101+HMDB51+K400)
    # the paper's setting (reconstructed): OpenAI's ViT-B/16 (a local file), SVT's views, Kinetics-400, 4 GPUs
    torchrun --standalone --nproc_per_node=4 lss.py --init clip --clip ViT-B-16.pt --size 224 --local-size 96 \
        --canvas 256 320 --frames 8 --stride 32 --local-views 8 --local-frames 8 --local-stride 4 --global-area 0.4 1 --local-area 0.05 0.4 \
        --lambda-up 1 --lambda-ca 1 \
        --dataset kinetics --data K400/ --annotations K400/annotations/ --epochs 20 --warmup-epochs 10 \
        --batch-size 8 --lr 5e-4 --test-clips 1 --workers 8 --out runs/lss_k400
    python lss.py zero-shot --ckpt runs/lss_k400/checkpoint.pt --dataset ucf101 --data UCF-101/ \
        --annotations ucfTrainTestlist/ --fold 1 --test-clips 1    # transfer: UCF101's class names
More (transductive runs, HMDB51, the frozen-CLIP baseline, probes): README.md and docs/lss.md.
"""

from __future__ import annotations  # type hints may name what comes further down (the file reads in paper order)

import copy
import gzip
import hashlib
import html
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

import data
from data import SyntheticWorld
import training


CLIP_LOGIT_SCALE = 100.0  # OpenAI's exp(logit_scale): similarities x 100 before the softmax
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # images must be normalised with CLIP's stats, not ImageNet's
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ----------------------------------------------------------------------------- CLIP
# openai/CLIP clip/model.py (ViT variant) rewritten batch-first with F.scaled_dot_product_attention. Module names are
# chosen so that state_dict keys are exactly OpenAI's ("visual.transformer.resblocks.0.attn.in_proj_weight", ...),
# which lets us load OpenAI checkpoints and open_clip state dicts without any key renaming.

class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (CLIP's checkpoints are fp16; LN statistics in fp16 are inaccurate)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with. Exact GELU would shift every feature."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (fused q,k,v projection)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows ordered q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, causal=False):  # x: (B, L, D)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)  # each (B, h, L, D/h)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # softmax(q k^T / sqrt(D/h)) v
        return self.out_proj(rearrange(x, "b h l d -> b l (h d)"))  # (B, L, D)


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = LayerNorm(width)  # eps 1e-5 as in CLIP (TimeSformer/SVT use 1e-6: do not copy that)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x, causal=False):  # x: (B, L, D)
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x, causal=False):
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, image_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)  # patchify
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):  # x: (B, 3, R, R), CLIP-normalised
        x = rearrange(self.conv1(x), "b d h w -> b (h w) d")  # (B, N, D), N = (R/patch)^2
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+N, D)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, embed_dim): the CLS token, projected to the joint space


@dataclass
class CLIPConfig:  # defaults: ViT-B/16
    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    vision_heads: int = 12  # OpenAI: vision_width // 64
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8  # OpenAI: text_width // 64
    text_layers: int = 12

    @classmethod
    def from_state_dict(cls, sd):
        """Read the architecture off an OpenAI-layout state dict, as openai/CLIP build_model does."""
        vision_width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = sd["ln_final.weight"].shape[0]
        return cls(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=patch * grid,
            vision_layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
            vision_width=vision_width,
            vision_patch_size=patch,
            vision_heads=vision_width // 64,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=text_width,
            text_heads=text_width // 64,
            text_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        )


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width,
                                        cfg.vision_layers, cfg.vision_heads, cfg.embed_dim)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)  # the text tower
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # learned inverse temperature, log-space
        # text-tower init of openai/CLIP initialize_parameters (only matters when training without loaded weights)
        w, L = cfg.text_width, cfg.text_layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w ** -0.5)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=w ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=w ** -0.5 * (2 * L) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * w) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=w ** -0.5 * (2 * L) ** -0.5)

    def encode_image(self, image):  # (B, 3, R, R) -> (B, embed_dim), not normalised
        return self.visual(image)

    def encode_text(self, text):  # (N, L<=77) long -> (N, embed_dim), not normalised
        x = self.token_embedding(text) + self.positional_embedding[:text.shape[1]]  # (N, L, W)
        x = self.ln_final(self.transformer(x, causal=True))  # causal: token i sees tokens <= i only
        # pool at the EOT token: EOT (49407) is the largest id, so argmax finds it (the first one if repeated)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # (N, W)
        return x @ self.text_projection

    def forward(self, image, text):
        """OpenAI's forward: cosine similarities scaled by exp(logit_scale)."""
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


# ----------------------------------------------------------------------------- video backbone
# CLIP's ViT with divided space-time attention (TimeSformer "divST", as in SVT), lss.md section 2. Only "space-time
# backbone, partially initialised from CLIP" is known about LSS; this structure and init are reconstructions.
# Module names mirror CLIP's visual tower ("transformer.resblocks.N.attn...") so that an OpenAI visual state dict
# loads directly, leaving exactly the new temporal parameters (temporal_*, time_embed) missing.

def drop_path(x, p, training):
    """Stochastic depth: drop the whole residual branch for a random subset of samples (dim 0), rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


class DividedSpaceTimeBlock(ResidualAttentionBlock):
    """Temporal attention (patches only) -> spatial attention (per frame, with CLS) -> MLP. x: (B, T, 1+N, D)."""

    def __init__(self, width, heads, shared_cls, drop_path=0.0):
        super().__init__(width, heads)  # ln_1, attn, ln_2, mlp: loaded from CLIP
        self.temporal_ln = LayerNorm(width)  # new; initialised as copies of ln_1 / attn by VideoViT.from_clip
        self.temporal_attn = Attention(width, heads)
        self.temporal_fc = nn.Linear(width, width)
        nn.init.zeros_(self.temporal_fc.weight)  # zero init: the temporal branch is an exact no-op at step 0,
        nn.init.zeros_(self.temporal_fc.bias)  # so the network starts as image CLIP
        self.shared_cls = shared_cls
        self.drop_path = drop_path

    def forward(self, x):  # x: (B, T, 1+N, D); token 0 of each frame is that frame's CLS
        B = x.shape[0]
        cls, patches = x[:, :, :1], x[:, :, 1:]  # (B, T, 1, D), (B, T, N, D)
        # 1. temporal attention: each spatial location attends over time; CLS tokens are not involved
        xt = rearrange(patches, "b t n d -> (b n) t d")  # (B*N, T, D)
        res = rearrange(self.temporal_attn(self.temporal_ln(xt)), "(b n) t d -> b t n d", b=B)  # (B, T, N, D)
        # SVT applies drop_path before temporal_fc (so its bias survives a drop); we drop the whole branch
        patches = patches + drop_path(self.temporal_fc(res), self.drop_path, self.training)
        # 2. spatial attention: each frame's tokens [CLS_t; patches_t] attend among themselves
        x = torch.cat([cls, patches], dim=2)  # (B, T, 1+N, D)
        res = rearrange(self.attn(self.ln_1(rearrange(x, "b t l d -> (b t) l d"))), "(b t) l d -> b t l d", b=B)
        if self.shared_cls:  # SVT: one CLS per video; its update is the mean over frames of the per-frame updates
            res = torch.cat([res[:, :, :1].mean(dim=1, keepdim=True).expand_as(res[:, :, :1]), res[:, :, 1:]], dim=2)
        x = x + drop_path(res, self.drop_path, self.training)
        # 3. MLP on every token
        return x + drop_path(self.mlp(self.ln_2(x)), self.drop_path, self.training)


# The two resizes below are nearest-neighbour interpolation written as a gather: the source index of each target
# position is computed here from Python ints, so torch.compile sees constant indices and one plain indexing op (no
# graph break; F.interpolate fused with the token concatenation once gave inductor an invalid kernel, docs/lss.md).
def nearest_indices(in_size, out_size):
    """Source index of each of out_size positions, as F.interpolate(mode='nearest') picks it: floor(i * in / out)."""
    return [i * in_size // out_size for i in range(out_size)]


def resize_pos_embed(pos, grid):
    """(1+g*g, D) CLIP positional embedding -> (1+grid*grid, D). Nearest, as SVT does for its 96 px local views
    (bicubic, timm's choice, would be smoother; nearest keeps every value a pretrained one)."""
    g = round((pos.shape[0] - 1) ** 0.5)
    if g == grid:
        return pos
    src = nearest_indices(g, grid)  # source row (and column) of each target row (and column)
    index = [0] + [1 + r * g + c for r in src for c in src]  # the CLS row, then the target grid row by row
    return pos[index]  # (1+grid*grid, D)


def resize_time_embed(time, T):
    """(1, T0, D) time embedding -> (1, T, D), nearest over time, as SVT does for other clip lengths."""
    if T == time.shape[1]:
        return time
    return time[:, nearest_indices(time.shape[1], T)]  # (1, T, D)


class VideoViT(nn.Module):
    """Video encoder. Input (B, T, C, H, W) CLIP-normalised floats; any T, any H=W (multiple of the patch size).

    cls_mode='per_frame' (our proposal, [D] in lss.md): every frame keeps its own CLS token (no averaging inside
    blocks); the video feature is mean_t(ln_post(cls_t) @ proj). At init this equals the frame-averaged image-CLIP
    feature for ANY video, the usual zero-shot baseline.
    cls_mode='shared' (SVT): one CLS per video, updated with the time-mean of the per-frame spatial updates. At init
    this equals image CLIP only when all frames are identical (or T = 1).
    """

    def __init__(self, image_resolution=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512,
                 num_frames=8, cls_mode="per_frame", drop_path=0.0):
        super().__init__()
        assert cls_mode in ("per_frame", "shared"), cls_mode
        self.patch_size, self.cls_mode = patch_size, cls_mode
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_resolution // patch_size) ** 2 + 1, width))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, width))  # zero: step 0 ignores time, like CLIP
        self.ln_pre = LayerNorm(width)
        dpr = torch.linspace(0, drop_path, layers).tolist()  # stochastic depth rate grows linearly with depth
        self.transformer = nn.Module()  # a bare container, only so that keys read "transformer.resblocks.N..."
        self.transformer.resblocks = nn.ModuleList(
            [DividedSpaceTimeBlock(width, heads, cls_mode == "shared", dpr[i]) for i in range(layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @classmethod
    def from_clip(cls, visual, cls_mode="per_frame", num_frames=8, drop_path=0.0):
        """Copy CLIP's visual tower; temporal_ln/temporal_attn start as copies of ln_1/attn, temporal_fc = 0."""
        width, output_dim = visual.proj.shape
        patch = visual.conv1.kernel_size[0]
        grid = round((visual.positional_embedding.shape[0] - 1) ** 0.5)
        blocks = visual.transformer.resblocks
        model = cls(patch * grid, patch, width, len(blocks), blocks[0].attn.heads, output_dim, num_frames, cls_mode,
                    drop_path).to(visual.proj.device)
        missing, unexpected = model.load_state_dict(visual.state_dict(), strict=False)
        assert not unexpected and all(".temporal_" in k or k == "time_embed" for k in missing), (missing, unexpected)
        for block in model.transformer.resblocks:
            block.temporal_ln.load_state_dict(block.ln_1.state_dict())
            block.temporal_attn.load_state_dict(block.attn.state_dict())
        return model

    def features(self, x, which="proj"):
        """x: (B, T, 3, H, W) -> 'cls': (B, width) ln_post CLS (linear-probe feature, SVT style);
        'proj': (B, embed_dim) the same projected into CLIP's joint space (the concept-space feature)."""
        assert which in ("proj", "cls"), which
        B, T = x.shape[:2]
        x = self.conv1(rearrange(x, "b t c h w -> (b t) c h w"))  # (B*T, D, h, w)
        grid = x.shape[-1]
        x = rearrange(x, "(b t) d h w -> b t (h w) d", b=B)  # (B, T, N, D)
        pos = resize_pos_embed(self.positional_embedding, grid).to(x.dtype)  # (1+N, D)
        time = resize_time_embed(self.time_embed, T)  # (1, T, D)
        patches = x + pos[1:] + rearrange(time.to(x.dtype), "1 t d -> 1 t 1 d")  # (B, T, N, D): space + time
        cls = (self.class_embedding + pos[0]).to(x.dtype).expand(B, T, 1, -1)  # (B, T, 1, D): one CLS per frame
        x = self.ln_pre(torch.cat([cls, patches], dim=2))  # (B, T, 1+N, D)
        for block in self.transformer.resblocks:
            x = block(x)
        # per_frame: mean over frames of ln_post(cls_t); shared: all T copies are equal, the mean is that copy.
        # The mean commutes with the (linear) projection, so 'proj' = 'cls' @ proj = mean_t(ln_post(cls_t) @ proj).
        feat = self.ln_post(x[:, :, 0]).mean(dim=1)  # (B, width)
        return feat if which == "cls" else feat @ self.proj  # (B, width) or (B, embed_dim)

    def forward(self, x):  # (B, T, 3, H, W) -> (B, embed_dim), not normalised (the loss normalises)
        return self.features(x, "proj")


# ----------------------------------------------------------------------------- student, teacher, text tower
# The student and the teacher are VideoViTs made from the same CLIP visual tower (from_clip: spatial weights copied,
# temporal branch a no-op at step 0); the teacher is the EMA of the student and sees only the global views. The
# text tower is kept only to build concept vectors and is frozen; it travels in the checkpoint so that zero-shot
# evaluation can embed any dataset's class names later.

class MultiView(nn.Module):
    """One backbone pass per view shape (DINO's MultiCropWrapper): [(N_i, T_i, 3, H_i, W_i)] -> [(N_i, embed_dim)].
    A module of its own so that DDP sees one forward per step, however many view shapes there are."""

    def __init__(self, vit: VideoViT):
        super().__init__()
        self.vit = vit

    def forward(self, groups):
        return [self.vit(x) for x in groups]


class Backbone(nn.Module):
    """What eval_linear.py and zero-shot evaluation see: float clips in [0, 1], (B, C, T, H, W), the layout every
    method is fed -> (B, feature_dim). CLIP normalisation and the ViT layout (B, T, C, H, W) happen here.
    feature 'cls': ln_post of the CLS token(s), width-d (SVT's linear-probe feature); 'proj': the same projected
    into the joint image-text space, embed_dim-d (the feature the concept losses and zero-shot use)."""

    def __init__(self, cfg: dict, feature: str | None = None, vit: VideoViT | None = None):
        super().__init__()
        a = cfg["clip_arch"]
        self.vit = vit if vit is not None else VideoViT(
            a["image_resolution"], a["vision_patch_size"], a["vision_width"], a["vision_layers"], a["vision_heads"],
            a["embed_dim"], num_frames=cfg["frames"], cls_mode=cfg["cls_mode"])
        self.feature = feature or cfg.get("probe_feature", "cls")
        self.feature_dim = a["vision_width"] if self.feature == "cls" else a["embed_dim"]
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, x):  # (B, C, T, H, W) in [0, 1]
        x = rearrange((x - self.mean) / self.std, "b c t h w -> b t c h w")  # (B, T, C, H, W), CLIP-normalised
        return self.vit.features(x, self.feature)  # (B, feature_dim)


def build_backbone(cfg: dict) -> nn.Module:
    """eval_linear.py's entry point: the network the checkpoint's "backbone" (the TEACHER) belongs to."""
    return Backbone(cfg)


def student_backbone_state(ckpt: dict) -> dict:
    """eval_linear.py --network student: the student's weights under build_backbone's keys (the checkpoint's
    "backbone" is the teacher)."""
    return {"vit." + k: v for k, v in ckpt["student"].items()}


def text_tower(clip: CLIP) -> CLIP:
    """The CLIP with its visual tower dropped (it lives on as the student/teacher), frozen. encode_text works."""
    clip.visual = None
    return clip.requires_grad_(False).eval()


# ----------------------------------------------------------------------------- concept spaces
# Fixed "concept" vectors from the frozen CLIP text tower, lss.md 3.1-3.3. They replace DINO's learned prototype
# head: a feature's logits are its cosine similarities to these vectors. Computed once; the text tower is not needed
# later.

# openai/CLIP data/prompts.md, Kinetics700: 4 prefixes x 7 person/action phrasings ("a example" sic, as in the source)
KINETICS_TEMPLATES = [f"{prefix} {phrase}" for prefix in ("a photo of", "a video of", "a example of",
                                                           "a demonstration of")
                      for phrase in ("{}.", "a person {}.", "a person using {}.", "a person doing {}.",
                                     "a person during {}.", "a person performing {}.", "a person practicing {}.")]
DEFAULT_TEMPLATES = ["a video of a person {}."]  # lss.md 3.2 fallback: one prompt, 28x cheaper to build
# openai/CLIP data/prompts.md, UCF101: 4 prefixes x {a person, the person} x 6 phrasings. CLIP published no HMDB51
# list; HMDB51's classes are human actions of the same kind as UCF101's, so it uses this one (our choice).
UCF101_TEMPLATES = [f"{prefix} {who} {verb}" for prefix in ("a photo of", "a video of", "a example of",
                                                            "a demonstration of")
                    for who in ("a person", "the person")
                    for verb in ("{}.", "using {}.", "doing {}.", "during {}.", "performing {}.", "practicing {}.")]
# The synthetic classes in words, as the stills' captions say their motions (scripts/pretrain_clip.py). The first
# phrase is the class's name in prompts, as CLIP's notebooks rename each dataset's classes for its prompts.
MOTION_PHRASES = {
    "static": ["standing still", "not moving", "resting motionless"],
    "move_sideways": ["moving sideways", "sliding horizontally", "gliding left or right"],
    "move_up": ["moving up", "rising", "climbing upward"],
    "move_down": ["moving down", "falling", "sinking downward"],
    "rotate": ["rotating", "spinning", "turning around"],
    "grow": ["growing", "getting bigger", "expanding"],
    "shrink": ["shrinking", "getting smaller", "contracting"],
    "orbit": ["orbiting", "circling", "moving in a circle"],
}
SYNTHETIC_CLASS_TEXT = {name: phrases[0] for name, phrases in MOTION_PHRASES.items()}
# The synthetic videos show shapes, not people: prompts in the words of the captioned stills the tiny CLIP learned
# from (scripts/pretrain_clip.py's CAPTION_TEMPLATES), one per shape kind, so the ensemble keeps the motion and averages the shape out.
SYNTHETIC_TEMPLATES = [f"{prefix}{shape} {{}}" for prefix in ("a ", "a photo of a ")
                       for shape in ("triangle", "square", "bar", "pentagon")]


def class_to_text(name):
    """Dataset label -> prompt text: 'ApplyEyeMakeup' -> 'apply eye makeup', 'brush_hair' -> 'brush hair'. The
    synthetic classes are named as their captions say them ('move_up' -> 'moving up'), as CLIP's own zero-shot
    notebooks rename each dataset's classes for prompts."""
    if name in SYNTHETIC_CLASS_TEXT:
        return SYNTHETIC_CLASS_TEXT[name]
    name = regex.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name.replace("_", " "))
    return " ".join(name.split()).lower()  # lower() changes nothing for CLIP (its tokenizer lowercases anyway)


@torch.no_grad()
def _encode_texts(clip, texts, bpe_path, batch_size):
    """Unit-norm text features (len(texts), D). no_grad, not inference_mode: the result is used in autograd later."""
    device = next(clip.parameters()).device
    tokens = tokenize(texts, clip.positional_embedding.shape[0], bpe_path)
    feats = [clip.encode_text(tokens[i:i + batch_size].to(device)).float() for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1)


def build_concept_space(clip, class_names, templates=KINETICS_TEMPLATES, bpe_path=None, batch_size=256):
    """C_cat (K, D): per class, mean of the unit text features of all its prompts, re-normalised (CLIP's
    prompt ensembling: averaging in embedding space, then back onto the sphere)."""
    texts = [t.format(class_to_text(c)) for c in class_names for t in templates]  # class-major order
    feats = _encode_texts(clip, texts, bpe_path, batch_size)  # (K*P, D)
    feats = rearrange(feats, "(k p) d -> k p d", p=len(templates)).mean(dim=1)  # (K, D)
    return F.normalize(feats, dim=-1)


def build_description_space(clip, descriptions, class_names, bpe_path=None, batch_size=256, template="{desc}"):
    """C_desc (M, D) unit rows, one per description (embedded alone), and assign (M,) long: its class index.

    descriptions: {class name: [description, ...]} (LLM-written in the paper; which LLM and how many: unknown).
    template may use {cls} and {desc}, e.g. "a video of {cls}: {desc}" (lss.md 3.3's option). Every class needs at
    least one description, otherwise the concept-alignment loss would see an empty class (log 0).
    """
    missing = [c for c in class_names if not descriptions.get(c)]
    if missing:
        raise ValueError(f"no descriptions for {len(missing)} classes, e.g. {missing[:5]}")
    texts, assign = [], []
    for k, c in enumerate(class_names):
        texts += [template.format(cls=class_to_text(c), desc=d) for d in descriptions[c]]
        assign += [k] * len(descriptions[c])
    feats = _encode_texts(clip, texts, bpe_path, batch_size)  # (M, D)
    return feats, torch.tensor(assign, dtype=torch.long, device=feats.device)


# The spaces of a training run, lss.md sections 3.1-3.3. The label lists and the (hand-written, not the paper's
# LLM) descriptions are in lss_concepts.json. Three category spaces (--concepts):
#   dataset       the training dataset's own class names x templates (transductive or K400-transfer settings)
#   union         the union of every label list in lss_concepts.json (UCF101, HMDB51, Kinetics-400; the synthetic
#                 labels only when training on them) plus the dataset's own, deduplicated by their text
#   descriptions  the dataset's classes, but each category vector is the normalised mean of the class's description
#                 embeddings: class names never reach the text tower
# The description space always covers the same classes as the category space (CA needs the assignment).
# Vectors are computed once per run and cached in the out dir under a key of everything they depend on (label
# list, templates, descriptions, text-tower weights).

CONCEPTS_FILE = Path(__file__).resolve().with_name("lss_concepts.json")


@lru_cache(maxsize=2)
def load_concepts_file(path=CONCEPTS_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def category_names(mode: str, classes) -> list:
    """The category space's class names for --concepts `mode`, given the training dataset's classes."""
    if mode != "union":
        return list(classes)
    labels = load_concepts_file()["labels"]
    names, seen = [], set()
    for name in list(classes) + labels["ucf101"] + labels["hmdb51"] + labels["kinetics400"]:
        if class_to_text(name) not in seen:  # 'Archery' (UCF101) and 'archery' (K400) are one concept
            seen.add(class_to_text(name))
            names.append(name)
    return names


def descriptions_for(names) -> tuple[dict, list]:
    """{name: [descriptions]} for every name (matched exactly, then by its text), and the names that have none;
    those get their plain name prompt as their only description, so CA still sees every class."""
    table = load_concepts_file()["descriptions"]
    by_text = {class_to_text(k): v for k, v in table.items()}
    out, missing = {}, []
    for n in names:
        d = table.get(n) or by_text.get(class_to_text(n))
        if not d:
            missing.append(n)
            d = [DEFAULT_TEMPLATES[0].format(class_to_text(n))]
        out[n] = list(d)
    return out, missing


def build_concepts(text: CLIP, names, mode: str, templates, desc_template="{desc}", bpe=None) -> dict:
    """{"C_cat" (K, D), "C_desc" (M, D), "assign" (M,)} from the frozen text tower, unit rows."""
    desc, _ = descriptions_for(names)
    C_desc, assign = build_description_space(text, desc, names, bpe, template=desc_template)  # (M, D), (M,)
    if mode == "descriptions":  # mean of the class's unit description vectors, back onto the sphere
        C_cat = F.normalize(C_desc.new_zeros(len(names), C_desc.shape[1]).index_add_(0, assign, C_desc), dim=-1)
    else:
        C_cat = build_concept_space(text, names, templates, bpe)  # (K, D): prompt ensemble per class name
    return {"C_cat": C_cat, "C_desc": C_desc, "assign": assign}


def run_concepts(cfg: Config, text: CLIP, names, out: Path, device, rank: int, world: int, print0) -> dict:
    """The run's concept spaces: built (or read from the out dir's cache) on rank 0, broadcast to the others."""
    desc, missing = descriptions_for(names)
    if missing:
        print0(f"warning: {len(missing)} of {len(names)} classes have no descriptions in {CONCEPTS_FILE.name} "
               f"(e.g. {missing[:3]}); their name prompt stands in as their only description")
    K, M, D = len(names), sum(len(v) for v in desc.values()), text.text_projection.shape[1]
    if rank == 0:
        key_fields = {"version": 1, "names": list(names), "concepts": cfg.concepts,
                      "templates": TEMPLATES[cfg.templates], "desc_template": cfg.desc_template,
                      "descriptions": hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest(),
                      "text_sha1": training.state_dict_sha1(text.state_dict())}
        path = out / f"concepts-{hashlib.sha1(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]}.pt"
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
        except Exception:  # noqa: BLE001 -- an unreadable cache file is rebuilt
            cached = None
        if cached is not None and cached.get("key_fields") == key_fields:
            concepts = {k: cached[k] for k in ("C_cat", "C_desc", "assign")}
            print0(f"concept vectors from the cache {path}")
        else:
            t0 = time.perf_counter()
            concepts = build_concepts(text.to(device), names, cfg.concepts, TEMPLATES[cfg.templates],
                                      cfg.desc_template, cfg.bpe)
            text.cpu()
            concepts = {k: v.cpu() for k, v in concepts.items()}
            training.save_checkpoint(path, {**concepts, "key_fields": key_fields})
            print0(f"built {K} category and {M} description vectors in {time.perf_counter() - t0:.1f}s -> {path}")
        concepts = {k: v.to(device) for k, v in concepts.items()}
    else:
        concepts = {"C_cat": torch.empty(K, D, device=device), "C_desc": torch.empty(M, D, device=device),
                    "assign": torch.empty(M, dtype=torch.long, device=device)}
    if world > 1:
        for v in concepts.values():
            dist.broadcast(v, src=0)
    return concepts


def class_vectors(text: CLIP, classes, how: str, templates, desc_template="{desc}", bpe=None, device="cpu"):
    """Zero-shot classifier weights (C, D) for a dataset's classes: 'names' = class names x templates (CLIP's
    prompt ensemble), 'descriptions' = mean of each class's description vectors."""
    text.to(device)
    c = build_concepts(text, classes, "descriptions" if how == "descriptions" else "dataset", templates,
                       desc_template, bpe)["C_cat"]
    text.cpu()
    return c.to(device)


# ----------------------------------------------------------------------------- config
# Defaults are a CPU-sized run on the built-in synthetic videos (`python lss.py`: ~5 minutes on 2 cores, plus ~5 the
# first time): LSS adapts an image CLIP, and where no OpenAI weights are at hand it adapts a tiny one (ViT width 128,
# 4 blocks, patch 8, 32 px; text width 128, 4 blocks) that scripts/pretrain_clip.py pretrains once on captioned
# synthetic stills and caches (--init tiny). The videos carry a faint motion trail (--trail 1), so that one frame
# hints at its motion as a real frame does and the frozen CLIP names the videos above chance, far from perfectly.
# The paper's setting (OpenAI CLIP ViT-B/16 weights, Kinetics-400, 224 px, SVT's views and schedule) is a command
# line in the module docstring. "(SVT: x)" marks SVT's value where ours differs; LSS's own values are unknown
# (lss.md section 5). --init random builds the CLIP from the --width ... --text-layers flags with random weights.
# --lr 1e-3 (at 256 videos), 4x below the rate that suited random weights: adaptation must keep what the CLIP knows
# (at 4e-3 its zero-shot fell during training; docs/results.md).

@dataclass
class Config:
    # data
    dataset: str = "auto"           # auto (from --data) | synthetic | folder | unlabeled | ucf101 | hmdb51 | kinetics
    data: str | None = None         # any folder of videos; none: the synthetic videos, made once in the cache
    annotations: str | None = None  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int = 1                   # UCF101/HMDB51 split number (1-3)
    data_fraction: float = 1.0      # use this class-stratified fraction of the training videos
    synthetic: SyntheticWorld = field(default_factory=lambda: SyntheticWorld(
        trail=1.0, context=0.5, clutter=0.3, noise=0.05))  # the synthetic videos: trails, scenes, a camera (see above)
    canvas: tuple = (32, 32)        # decode size (H, W): frames are scaled to cover it, then centre-cropped
    # views: SVT's multi-view recipe (lss.md section 4; see MultiViewSampler)
    frames: int = 8                 # frames decoded per view; a global view uses all of them (SVT: 8)
    stride: int = 4                 # frames between a global view's frames (SVT: 32, an 8.5 s window at 30 fps)
    # No local views by default: at 32 px with patch 8 a 24-px local view is 9 tokens of part of the frame, and on
    # held-out videos the student learnt more from the two global views alone, from perfect targets and from the
    # teacher's (docs/lss.md, "Differences from the paper"). The paper-scale command sets SVT's 8 of 96 px.
    local_views: int = 0            # local views per video (SVT: 8)
    local_frames: int = 4           # frames per local view, subsampled on the device from --frames (SVT: 8)
    local_stride: int = 1           # frames between a local view's decoded frames (SVT: a window 1/8 of the global one)
    size: int = 32                  # global view side in pixels, a multiple of the patch size (SVT: 224)
    local_size: int = 24            # local view side, a multiple of the patch size (SVT: 96)
    global_area: tuple = (0.6, 1.0)  # random resized crop area range of the global views (SVT/DINO: 0.4-1)
    local_area: tuple = (0.25, 0.6)  # random resized crop area range of the local views (SVT/DINO: 0.05-0.4)
    color_p: float = 0.8            # probability of colour jitter per view (SVT: 0.8)
    gray_p: float = 0.2             # probability of grayscale per view (SVT: 0.2)
    # model
    init: str = "tiny"              # tiny (a CLIP pretrained once on captioned stills, cached) | random (the flags below) | clip (--clip)
    clip: str | None = None         # OpenAI-layout CLIP weights (state dict or OpenAI's JIT .pt); needed by --init clip
    width: int = 96                 # --init random: ViT width; heads = width // 64 (at least 1), as OpenAI (ViT-B: 768)
    layers: int = 3                 # --init random: ViT blocks (ViT-B: 12)
    patch: int = 8                  # --init random: patch side in pixels (ViT-B/16: 16)
    embed_dim: int = 64             # --init random: joint image-text space (ViT-B/16: 512)
    text_width: int = 64            # --init random: text transformer width (ViT-B/16: 512)
    text_layers: int = 2            # --init random: text transformer blocks (ViT-B/16: 12)
    cls_mode: str = "per_frame"     # per_frame (a CLS token per frame; step 0 = frame-averaged CLIP) | shared (SVT's)
    drop_path: float = 0.1          # stochastic depth of the student (SVT: 0.1); the teacher has none
    probe_feature: str = "cls"      # feature eval_linear.py sees: cls (ln_post CLS, width-d, as SVT) | proj (embed_dim)
    # concept spaces (lss.md sections 3.1-3.3)
    concepts: str = "auto"          # category space: auto (union if unlabeled, else dataset) | dataset | union | descriptions
    templates: str = "auto"         # prompts per class name: auto (by --dataset) | kinetics | ucf101 | synthetic | single
    desc_template: str = "{desc}"   # text embedded per description; may use {cls} and {desc}
    bpe: str | None = None          # CLIP's BPE vocabulary file (default: the copy inside the clip-anytorch package)
    # losses (lss.md section 3.5; all reconstructions)
    # The full loss adds concept alignment (the paper's second objective) and MUST's uniform prior, each at weight 1
    # (the paper's weights could not be read: docs/lss.md). Our default is distillation alone: on held-out dev videos
    # and then over 3 seeds in the synthetic world the two terms did not add to it at this scale (docs/results.md,
    # "LSS that improves on its CLIP"). --lambda-up 1 --lambda-ca 1: the full loss, as the paper-scale command runs.
    lambda_ca: float = 0.0          # weight of concept alignment L_CA, 0 = off (full loss: 1; the paper's: unknown)
    lambda_up: float = 0.0          # weight of the uniform prior L_UP, 0 = off (full loss: 1, MUST's)
    ca_target: str = "class"        # class (student's description mass summed per class) | description
    up_scope: str = "global"        # global (p-bar over the batch of all processes) | local (per process)
    up_average: str = "auto"        # p-bar of L_UP: auto (MUST: moving average when K >= 512, else the batch) | batch | ema
    tau_s: float = 0.0              # student temperature; 0 = auto: the CLIP's 1/exp(logit_scale) (OpenAI: 0.01), 0.1 with --init random
    tau_t: float = 0.0              # teacher temperature; 0 = auto: 0.4 tau_s (OpenAI: 0.004), 0.04 with --init random
    tau_t_warmup: float = 0.0       # teacher temperature at step 0, linear to --tau-t over the next flag (0 = off)
    tau_t_warmup_epochs: float = 0.0  # length of that warmup (DINO: 30 epochs from 0.04; SVT: none)
    center_momentum: float = 0.9    # EMA momentum of the teacher centre (DINO/SVT: 0.9; 1 = no centring)
    # controls (labelled videos only; off for LSS itself)
    targets: str = "teacher"        # teacher (LSS) | oracle (control: the true class as the target of --oracle-fraction of the videos)
    oracle_fraction: float = 1.0    # --targets oracle: fraction of training videos (a fixed random subset) given the true class
    # optimisation
    epochs: int = 20                # passes over the training videos (SVT: 20 on Kinetics-400)
    batch_size: int = 16            # videos per process per step; global batch = batch_size x processes (SVT: 8 x 4)
    lr: float = 1.6e-2              # AdamW peak lr at a global batch of 256 videos, scaled linearly (SVT: 5e-4)
    new_lr_scale: float = 1.0       # lr multiplier of the parameters CLIP does not have: temporal attention, time embedding
    min_lr: float = 1e-6            # lr at the end of the cosine (SVT: 1e-6)
    # 3 of 20 epochs: with 1, the teacher's targets got worse while the lr peaked and the zero-shot gain was smaller
    # on held-out videos (docs/lss.md, "Differences from the paper"); SVT warms up for half its run.
    warmup_epochs: float = 3.0      # linear lr warmup from 0 (SVT: 10 of 20 epochs)
    weight_decay: float = 0.04      # start of the cosine weight-decay schedule; none on biases/1-d params (SVT: 0.04)
    weight_decay_end: float = 0.4   # end of that schedule (SVT: 0.4)
    momentum_teacher: float = 0.996  # teacher EMA momentum at step 0 (at most), cosine to 1 (SVT; DINO: higher for small batches)
    ema_horizon: float = 0.1        # the teacher averages over this fraction of the run: start momentum min(--momentum-teacher, 1 - 1/(horizon x steps)); 0 = off
    clip_grad: float = 3.0          # per-parameter gradient-norm clip, as DINO/SVT (0 = off)
    # machinery
    device: str = "auto"            # auto | cpu | cuda
    workers: int = 2                # DataLoader worker processes per process (decode on the CPU)
    amp: str = "auto"               # auto (bf16 on GPU, off on CPU) | bf16 | off
    compile: bool = False           # torch.compile student and teacher (GPU: faster after a minute of compiling)
    seed: int = 0
    out: str = "runs/lss"           # output dir: checkpoint.pt, config.json, log.jsonl, concepts-*.pt, skipped.txt
    log_every: int = 10             # steps between log lines
    max_steps: int = 0              # stop after this many steps in total (0 = no limit; for tests and quick looks)
    zero_shot_eval: bool = True     # zero-shot top-1 on the dataset's test split with its class names, at start and end
    test_clips: int = 4             # zero-shot: uniformly spaced clips per test video (1 centre crop each)


# Changing these between a checkpoint and a resume would load weights into a different network or change the
# concept space under the centre: refused. (The CLIP architecture itself is checked separately, "clip_arch".)
ARCH_KEYS = ("init", "width", "layers", "patch", "embed_dim", "text_width", "text_layers", "frames", "cls_mode",
             "concepts", "templates", "desc_template")

TEMPLATES = {"kinetics": KINETICS_TEMPLATES, "ucf101": UCF101_TEMPLATES, "synthetic": SYNTHETIC_TEMPLATES,
             "single": DEFAULT_TEMPLATES}
DATASET_TEMPLATES = {"kinetics": "kinetics", "ucf101": "ucf101", "hmdb51": "ucf101", "synthetic": "synthetic",
                     "folder": "kinetics", "unlabeled": "kinetics"}  # --templates auto
CHOICES = {"init": ("tiny", "random", "clip"), "cls_mode": ("per_frame", "shared"), "probe_feature": ("cls", "proj"),
           "concepts": ("auto", "dataset", "union", "descriptions"), "templates": ("auto",) + tuple(TEMPLATES),
           "ca_target": ("class", "description"), "up_scope": ("global", "local"),
           "up_average": ("auto", "batch", "ema"), "amp": ("auto", "bf16", "off"), "targets": ("teacher", "oracle")}

# Temperatures by initialisation (lss.md section 3.5). The logits are cosine similarities divided by tau. A trained
# CLIP's image-text cosines sit in a narrow band (~0.15-0.35 for OpenAI's), so DINO's tau_s = 0.1 would give nearly
# uniform distributions: use the CLIP's own scale, tau_s = 1/exp(logit_scale) (OpenAI's: 1/100; the tiny CLIP
# learns its own), and DINO's teacher/student ratio 0.4 for the teacher (OpenAI's: 0.004). From random weights
# nothing confines the cosines to a band (the student can turn its feature onto a concept vector, cosine -> 1), so
# DINO's 0.1 / 0.04 apply.
RANDOM_TAU = (0.1, 0.04)
TEACHER_STUDENT_TAU_RATIO = 0.4


def resolve_temperatures(cfg: Config, clip: "CLIP | None") -> Config:
    """--tau-s/--tau-t 0 (auto) -> the values for this start; the checkpoint records the values used."""
    if clip is None:
        tau_s, tau_t = RANDOM_TAU
    else:
        tau_s = 1 / clip.logit_scale.exp().item()
        tau_t = TEACHER_STUDENT_TAU_RATIO * tau_s
    return replace(cfg, tau_s=cfg.tau_s or tau_s, tau_t=cfg.tau_t or tau_t)


def parse_args(argv=None) -> Config:
    desc = ("LSS pretraining. Zero-shot evaluation: `python lss.py zero-shot --help`. "
            + __doc__.strip().split("\n\n")[0])
    cfg = training.parse_config(Config, argv, desc)
    cfg = data.decide_dataset(cfg)  # --dataset auto: synthetic, a labelled folder or unlabeled videos, from --data
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be one of {list(allowed)}, "
                             f"got {getattr(cfg, name)!r}")
    if cfg.init == "clip" and not cfg.clip:
        raise SystemExit("error: --init clip needs --clip PATH (OpenAI-layout CLIP weights, e.g. ViT-B-16.pt)")
    if cfg.init != "clip" and cfg.clip:
        raise SystemExit(f"error: --clip is only used with --init clip (--init {cfg.init} makes its own CLIP)")
    if not 1 <= cfg.local_frames <= cfg.frames:
        raise SystemExit(f"error: --local-frames must be in 1..--frames ({cfg.frames}), got {cfg.local_frames}")
    if cfg.local_views < 0 or cfg.frames < 1 or cfg.stride < 1 or cfg.local_stride < 1:
        raise SystemExit("error: --local-views must be >= 0 and --frames, --stride, --local-stride >= 1")
    if cfg.targets == "oracle" and cfg.dataset == "unlabeled":
        raise SystemExit(f"error: --targets oracle needs labelled videos (the true class is the target), and "
                         f"{cfg.data} holds unlabeled ones")
    for flag, p in (("oracle-fraction", cfg.oracle_fraction), ("color-p", cfg.color_p), ("gray-p", cfg.gray_p)):
        if not 0.0 <= p <= 1.0:
            raise SystemExit(f"error: --{flag} must be in 0..1, got {p}")
    if cfg.templates == "auto":
        cfg = replace(cfg, templates=DATASET_TEMPLATES[cfg.dataset])  # the checkpoint records the list used
    # Unlabeled videos have no class names to build a category space from: the union of the label sets we ship
    # (UCF101, HMDB51, Kinetics-400 names) stands in, as for a Kinetics-pretrained model that transfers.
    if cfg.dataset == "unlabeled":
        if cfg.concepts in ("dataset", "descriptions"):
            raise SystemExit(f"error: --concepts {cfg.concepts} needs the dataset's class names, and {cfg.data} holds "
                             f"unlabeled videos: use --concepts union (the default for unlabeled videos)")
        if cfg.concepts == "auto" and os.environ.get("RANK", "0") == "0":
            print(f"concepts: the videos have no labels, so the category space is --concepts union: "
                  f"{len(category_names('union', []))} action names of UCF101, HMDB51 and Kinetics-400")
    if cfg.concepts == "auto":
        cfg = replace(cfg, concepts="union" if cfg.dataset == "unlabeled" else "dataset")
    if cfg.init == "random":  # a pretrained CLIP's temperatures are read off its weights, in train()
        cfg = resolve_temperatures(cfg, None)
    return cfg


# ----------------------------------------------------------------------------- losses
# All formulas here are RECONSTRUCTIONS (lss.md 3.5); the paper's own could not be read.
# Convention: losses take cosine similarities s = f_hat . C^T (values in [-1, 1]) and the temperatures separately;
# the centre c lives in the same cosine units (it is subtracted before dividing by tau_t, as DINO does).
# Views: the teacher sees the 2 global views; the student sees all V views, ordered [global_1, global_2, locals...],
# so student view i and teacher view i are the same crop. H(p, q) = -sum_k p_k log q_k.

def concept_similarities(f, C):
    """f: (B, D) features, C: (K, D) unit concept vectors -> (B, K) cosine similarities, always in fp32: cosines
    sit in a narrow band (~0.15-0.35) and are divided by tau ~ 0.01, so bf16 rounding (~1e-3) would move logits
    by ~0.1-0.25. Autocast is switched off here for that reason."""
    with torch.autocast(f.device.type, enabled=False):
        return F.normalize(f.float(), dim=-1) @ C.float().t()


def concept_logits(f, C, tau):
    """s / tau, e.g. zero-shot logits with tau = 1/100 (CLIP's exp(logit_scale))."""
    return concept_similarities(f, C) / tau


def _cross_view_ce(targets, student_logprobs):
    """mean over pairs (teacher view i, student view v), v != i, of mean_batch H(targets[i], exp(student_logprobs[v])).
    The i == v pairs are skipped: predicting a view from itself is trivial (DINO/SVT do the same). 2 teacher and
    V student views give 2 (V - 1) pairs."""
    total, pairs = 0.0, 0
    for i, p in enumerate(targets):
        for v, logq in enumerate(student_logprobs):
            if v == i:
                continue
            total = total + (-(p * logq).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


def teacher_probs(teacher_sims, center, tau_t):
    """P_t = softmax((s_t - c) / tau_t), no gradient. Centring keeps any one concept from dominating; the low
    temperature sharpens. Together they prevent collapse (DINO)."""
    return [F.softmax((s - center) / tau_t, dim=-1).detach() for s in teacher_sims]


def oracle_targets(targets, truth):
    """The control `--targets oracle`: the true class, one-hot, replaces the teacher's distribution for the videos
    whose truth is given (truth (B,) concept index, -1: keep the teacher's). What distillation can teach with perfect
    targets and the same views, steps and optimiser is the ceiling of what self-distillation could reach."""
    onehot = F.one_hot(truth.clamp_min(0), targets[0].shape[-1]).to(targets[0].dtype)  # (B, K)
    use = (truth >= 0)[:, None]  # (B, 1)
    return [torch.where(use, onehot, p) for p in targets]


def concept_distillation_loss(targets, student_sims, tau_s):
    """L_CD = mean_{i, v != i} H(P_t^i, P_s^v), P_s^v = softmax(s_s^v / tau_s), over the category space.
    targets: list of (B, K), the teacher's P_t^i per global view; student_sims: list of (B, K), one per student view."""
    return _cross_view_ce(targets, [F.log_softmax(s / tau_s, dim=-1) for s in student_sims])


def mean_student_probs(student_sims, tau_s):
    """p_bar (K,): mean over views and batch of softmax(s / tau_s), with gradient. Local to this process; under DDP
    the caller decides whether to average it across ranks before uniform_prior_loss."""
    return torch.stack([F.softmax(s / tau_s, dim=-1).mean(dim=0) for s in student_sims]).mean(dim=0)


def uniform_prior_loss(student_probs_mean):
    """L_UP = -(1/K) sum_k log p_bar_k - log K = KL(U || p_bar) >= 0, exactly 0 iff p_bar is uniform.
    (MUST's "fairness regularisation" without the log K offset, which only shifts the value.) Penalises the
    student for putting its mass, averaged over the batch, on few concepts: collapse onto one concept is the main
    failure mode when the concept vectors are frozen."""
    K = student_probs_mean.shape[-1]
    return -torch.log(student_probs_mean).mean() - math.log(K)


def concept_alignment_loss(targets, student_desc_sims, assign, K, tau_s, target="class"):
    """Ties descriptions (attributes) to actions across views.

    target='class' (default): Q_s^v = softmax(s_desc^v / tau_s) over M descriptions, Q~_s^v = Q_s^v A (mass summed
    per class, A (M, K) the 0/1 assignment), L_CA = mean_{i, v != i} H(P_t^i, Q~_s^v).
    target='description' (lss.md's alternative): spread the teacher's class mass evenly over the class's
    descriptions, T_j = P_t[assign_j] / m_assign_j, and L_CA = mean H(T^i, Q_s^v).
    targets: the teacher's P_t^i, list of (B, K); student_desc_sims: list of (B, M); assign: (M,) long in [0, K).
    """
    logq = [F.log_softmax(s / tau_s, dim=-1) for s in student_desc_sims]  # list of (B, M)
    if target == "description":
        counts = torch.bincount(assign, minlength=K).to(targets[0].dtype)  # (K,) m_k
        return _cross_view_ce([p[:, assign] / counts[assign] for p in targets], logq)
    assert target == "class", target
    # log Q~_k = logsumexp_{j in class k} log Q_j, computed with a per-class max shift m_k so that no class with
    # tiny mass underflows to log 0 (at tau_s = 0.01, log-probs span hundreds of nats)
    out = []
    for lq in logq:
        idx = assign.expand_as(lq)  # (B, M)
        m = lq.new_full((lq.shape[0], K), -math.inf).scatter_reduce(1, idx, lq.detach(), "amax")  # (B, K)
        summed = lq.new_zeros(lq.shape[0], K).scatter_add(1, idx, torch.exp(lq - m.gather(1, idx)))  # (B, K), >= 1
        out.append(m + summed.log())  # (B, K) log Q~
    return _cross_view_ce(targets, out)


@torch.no_grad()
def update_center(center, teacher_sims, momentum):
    """c <- m c + (1 - m) mean_batch(s_t), batch mean taken over all global views and all ranks (DINO/SVT, m = 0.9)."""
    s = torch.cat(list(teacher_sims)) if isinstance(teacher_sims, (list, tuple)) else teacher_sims
    s = s.float()  # (n, K)
    batch_sum, n = s.sum(dim=0), torch.tensor(float(s.shape[0]), device=s.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_sum)
        dist.all_reduce(n)
    return center * momentum + batch_sum / n * (1 - momentum)


@torch.no_grad()
def ema_update(teacher, student, m):
    """teacher <- m teacher + (1 - m) student for every parameter; buffers copied. m = 1 keeps the teacher, m = 0
    copies the student (both exactly). Pass the unwrapped student (model.module under DDP)."""
    t_named, s_named = list(teacher.named_parameters()), list(student.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in s_named]:
        raise ValueError("teacher and student parameters do not match")
    t_params, s_params = [p for _, p in t_named], [p.detach() for _, p in s_named]
    torch._foreach_mul_(t_params, m)  # one fused kernel per op over all tensors, instead of ~200 small ones
    torch._foreach_add_(t_params, s_params, alpha=1 - m)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def global_mean_probs(p_local: torch.Tensor, scope: str) -> torch.Tensor:
    """p-bar for the uniform prior under DDP. 'global': the mean of every process's p-bar (equal batch sizes, so
    exactly the p-bar of the global batch) through a DIFFERENTIABLE all-reduce. Its backward all-reduces the
    incoming gradients, so each process's p-bar_r receives f'(p-bar) (W processes x 1/W each), its parameter
    gradient is f'(p-bar) dp-bar_r/dtheta, and DDP's averaging makes that (1/W) sum_r f'(p-bar) dp-bar_r/dtheta =
    d f(p-bar_global)/dtheta: exactly the gradient of one process on the whole batch, the same scale as the other
    losses (batch means whose gradients DDP averages). A test checks this with 2 processes.
    'local': every process penalises its own p-bar (then L_UP is the mean over processes of KL(U || p-bar_r): a
    stronger push to spread each small per-GPU batch; identical to 'global' with one process)."""
    if scope == "local" or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return p_local
    with warnings.catch_warnings():  # torch 2.14 marks it deprecated; its suggested replacement has no autograd
        warnings.simplefilter("ignore", FutureWarning)
        return torch.distributed.nn.functional.all_reduce(p_local.contiguous()) / dist.get_world_size()


class LSSLoss(nn.Module):
    """L = L_CD + lambda_ca L_CA + lambda_up L_UP on the frozen concept spaces, with what it keeps from step to step:
    the teacher's centre (DINO's DINOLoss keeps its centre the same way) and, for large K, the uniform prior's moving
    average. The concept vectors are buffers: they follow .to(device) and never receive a gradient."""

    def __init__(self, concepts: dict, cfg: Config):
        super().__init__()
        self.register_buffer("C_cat", concepts["C_cat"])    # (K, D) category space: class names x templates
        self.register_buffer("C_desc", concepts["C_desc"])  # (M, D) description space
        self.register_buffer("assign", concepts["assign"])  # (M,) the class of each description
        self.register_buffer("center", torch.zeros(len(concepts["C_cat"]), device=concepts["C_cat"].device))  # (K,)
        self.p_bar_prev = None  # the uniform prior's moving average (--up-average ema), no gradient
        self.cfg = cfg

    def forward(self, t_feats, s_feats, tau_t: float, truth=None):
        """t_feats: the teacher's 2 global views, s_feats: the student's 2 + L views, each (B, E); truth: None, or
        (B,) concept indices for the oracle control (-1: the teacher's target). Returns the loss, its three terms,
        the targets (2 x (B, K)) and the category-space similarities (2 x (B, K) teacher, (2+L) x (B, K) student)."""
        cfg, K = self.cfg, self.C_cat.shape[0]
        # similarities in fp32 (concept_similarities turns autocast off: tau ~ 0.01 amplifies bf16 rounding)
        t_cat = [concept_similarities(f, self.C_cat) for f in t_feats]  # 2 x (B, K)
        s_cat = [concept_similarities(f, self.C_cat) for f in s_feats]  # (2+L) x (B, K)
        targets = teacher_probs(t_cat, self.center, tau_t)  # 2 x (B, K): P_t^i, no gradient
        if truth is not None:
            targets = oracle_targets(targets, truth)
        cd = concept_distillation_loss(targets, s_cat, cfg.tau_s)
        loss, ca, up = cd, torch.zeros((), device=cd.device), torch.zeros((), device=cd.device)
        if cfg.lambda_ca > 0:
            s_desc = [concept_similarities(f, self.C_desc) for f in s_feats]  # (2+L) x (B, M)
            ca = concept_alignment_loss(targets, s_desc, self.assign, K, cfg.tau_s, cfg.ca_target)
            loss = loss + cfg.lambda_ca * ca
        if cfg.lambda_up > 0:
            p_bar = global_mean_probs(mean_student_probs(s_cat, cfg.tau_s), cfg.up_scope)  # (K,)
            if cfg.up_average == "ema" or (cfg.up_average == "auto" and K >= 512):
                # MUST's moving average for large concept spaces, where one batch covers few concepts:
                # p-bar = (p-bar_prev + p-bar_batch) / 2, the previous value without gradient
                if self.p_bar_prev is not None:
                    p_bar = 0.5 * (self.p_bar_prev + p_bar)
                self.p_bar_prev = p_bar.detach()
            up = uniform_prior_loss(p_bar)
            loss = loss + cfg.lambda_up * up
        return loss, dict(cd=cd, ca=ca, up=up), targets, t_cat, s_cat

    @torch.no_grad()
    def update_center(self, t_cat):
        self.center = update_center(self.center, t_cat, self.cfg.center_momentum)  # all-reduced batch mean


# ----------------------------------------------------------------------------- data: 2 global + L local views
# SVT's views (lss.md section 4), adapted to one constraint: data.py's collate stacks the views of a video, so
# every view decodes the same number of frames. The local views' lower frame count is made on the device instead
# (an evenly spaced subset of their frames), and their smaller crop by the augmentation's output size.

@dataclass
class MultiViewSampler:
    """data.py's sampler interface (num_frames, fps, rng) -> [global_1, global_2, local_1, ..., local_L], each
    `frames` frame indices. A window of about frames x stride frames is placed at random in the video. Both global
    views span all of it, global_2 shifted by stride // 2 frames (SVT: linspace(0, W-5) and linspace(5, W)): the
    same moment sampled at two phases. Each local view is `frames` frames `local_stride` apart starting at a random
    point inside the window: a short moment at a higher frame rate (SVT: W/8 long, 8 frames). A view that runs past
    the end of the video repeats its last frame, as data.py's samplers (and SVT) do."""
    frames: int
    stride: int
    local_views: int
    local_stride: int

    def __call__(self, num_frames, fps, rng):
        n = int(num_frames)
        shift = self.stride // 2
        window = (self.frames - 1) * self.stride + 1 + shift  # frames the two global views cover together
        start = int(rng.integers(max(1, n - window + 1)))
        g1 = start + self.stride * np.arange(self.frames, dtype=np.int64)
        views = [np.minimum(g1, n - 1), np.minimum(g1 + shift, n - 1)]
        local_span = (self.frames - 1) * self.local_stride + 1
        for _ in range(self.local_views):
            s = start + int(rng.integers(max(1, window - local_span + 1)))
            views.append(np.minimum(s + self.local_stride * np.arange(self.frames, dtype=np.int64), n - 1))
        return views


def view_augmentations(cfg: Config):
    """SVT's spatial augmentation per view: random resized crop (area per view type, aspect 3/4-4/3), flip 0.5,
    colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, no hue) with p --color-p (SVT: 0.8), grayscale
    with p --gray-p (SVT: 0.2). SVT's Gaussian blur and solarisation are no-ops in its code (lss.md section 4), so
    they are off. One set of parameters per clip, shared by all its frames."""
    common = dict(aspect=(3 / 4, 4 / 3), flip_p=0.5, jitter=(0.4, 0.4, 0.2, 0.0), jitter_p=cfg.color_p,
                  gray_p=cfg.gray_p, blur_p=0.0, solarize_p=0.0)
    return data.AugmentConfig(area=cfg.global_area, **common), data.AugmentConfig(area=cfg.local_area, **common)


def local_frame_index(frames: int, local_frames: int) -> torch.Tensor:
    """Evenly spaced `local_frames` of a decoded `frames`-frame clip (all of them when equal): 8 -> 4 is 0, 2, 5, 7."""
    return torch.from_numpy(np.linspace(0, frames - 1, local_frames).round().astype(np.int64))


def to_vit(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, T, H, W) in [0, 1] -> CLIP-normalised (B, T, C, H, W), the ViT layout."""
    return rearrange(data.normalize(x, CLIP_MEAN, CLIP_STD), "b c t h w -> b t c h w")


def make_views(video: torch.Tensor, cfg: Config, aug_global, aug_local, generator) -> list:
    """uint8 (B, 2+L, T, H, W, 3) -> [globals (2B, T, 3, S, S), locals (L*B, T_l, 3, s, s)], augmented,
    CLIP-normalised, ViT layout. View-major: rows v*B..v*B+B-1 hold view v of every video, so splitting the
    features into chunks of B gives the per-view list [global_1, global_2, local_1, ...] the losses expect (student
    view i and teacher view i are the same crop, i = 0, 1)."""
    g = rearrange(video[:, :2], "b v t h w c -> (v b) c t h w")  # (2B, C, T, H, W) uint8
    groups = [data.augment(g, cfg.size, aug_global, generator)]  # (2B, C, T, S, S) in [0, 1]
    if video.shape[1] > 2:
        idx = local_frame_index(video.shape[2], cfg.local_frames).to(video.device)
        loc = rearrange(video[:, 2:, idx], "b v t h w c -> (v b) c t h w")  # (L*B, C, T_l, H, W)
        groups.append(data.augment(loc, cfg.local_size, aug_local, generator))  # (L*B, C, T_l, s, s)
    return [to_vit(x) for x in groups]


# ----------------------------------------------------------------------------- schedules and optimizer

def tau_t_at(step: int, warmup: int, cfg: Config) -> float:
    """Teacher temperature: linear from --tau-t-warmup to --tau-t over `warmup` steps (DINO), then constant."""
    if warmup <= 0 or cfg.tau_t_warmup <= 0 or step >= warmup:
        return cfg.tau_t
    return cfg.tau_t_warmup + (cfg.tau_t - cfg.tau_t_warmup) * step / warmup


def start_momentum(cfg: Config, total_steps: int) -> float:
    """The teacher's EMA momentum at step 0, scaled to the run's length. An EMA with momentum m averages the student
    over the last ~1/(1 - m) steps: SVT's 0.996 is ~250 steps, a blink in its ~150,000-step run, but longer than our
    whole CPU run, where it would leave the teacher (the network that is evaluated) mostly the initial CLIP. So the
    averaging window is a fraction of the run, --ema-horizon, and never longer than the paper's:
    m0 = min(--momentum-teacher, 1 - 1 / (horizon x steps)). Any run longer than 250 / horizon steps gets the
    paper's 0.996; --ema-horizon 0 turns the scaling off."""
    if cfg.ema_horizon <= 0:
        return cfg.momentum_teacher
    return min(cfg.momentum_teacher, max(0.0, 1 - 1 / (cfg.ema_horizon * max(1, total_steps))))


def make_schedules(cfg: Config, steps_per_epoch: int, peak_lr: float) -> dict:
    """Every schedule as one value per step, as DINO's lr_schedule[it]: lr (warmup, then cosine), weight decay and
    teacher momentum (cosine) and the teacher temperature (warmup). Functions of the step alone, so a resumed run
    continues exactly."""
    total = cfg.epochs * steps_per_epoch
    warmup, tau_warmup = round(cfg.warmup_epochs * steps_per_epoch), round(cfg.tau_t_warmup_epochs * steps_per_epoch)
    steps = range(total + 1)
    return dict(lr=np.array([training.warmup_cosine(s, total, warmup, peak_lr, cfg.min_lr) for s in steps]),
                wd=np.array([training.cosine(s, total, cfg.weight_decay, cfg.weight_decay_end) for s in steps]),
                momentum=np.array([training.cosine(s, total, start_momentum(cfg, total), 1.0) for s in steps]),
                tau_t=np.array([tau_t_at(s, tau_warmup, cfg) for s in steps]))


def is_new(name: str) -> bool:
    """The parameters image CLIP does not have: the temporal attention of every block and the time embedding."""
    return ".temporal_" in name or name == "time_embed"


def param_groups(model: nn.Module, new_lr_scale: float = 1.0):
    """DINO's get_params_groups: weight decay on matrices and embeddings, none on biases and 1-d parameters
    (LayerNorm gains, the class embedding); the decay of the groups marked "scheduled" follows the schedule. With
    new_lr_scale != 1 the parameters CLIP does not have (is_new) get their own groups at that multiple of the lr:
    they start from nothing (temporal_fc = 0) while the pretrained ones should move little."""
    split = new_lr_scale != 1.0
    groups = {(new, decay): [] for new in ((False, True) if split else (False,)) for decay in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(split and is_new(name), not (name.endswith(".bias") or p.ndim <= 1))].append(p)
    return [dict(params=ps, lr_scale=new_lr_scale if new else 1.0, scheduled=decay,
                 **({} if decay else {"weight_decay": 0.0})) for (new, decay), ps in groups.items()]


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """DINO/SVT utils.clip_gradients: EACH parameter's gradient is scaled down to norm <= max_norm on its own (not
    torch's clip_grad_norm_ over all of them). Returns the global gradient norm before clipping, for the log."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        torch._foreach_mul_(grads, [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms])
    return total


# ----------------------------------------------------------------------------- one training step

def stream_seed(cfg: Config, step: int, rank: int, stream: int = 0) -> int:
    """The seed of one of a step's random streams on one process (0: the views' augmentation, 1: drop-path): a
    function of (seed, step, rank, stream), so resuming at any step reproduces them and processes draw differently.
    training.step_seed gives one stream per step; LSS needs two, hence numpy's SeedSequence, which mixes the four
    numbers without collisions."""
    return int(np.random.SeedSequence([cfg.seed, step, rank, stream]).generate_state(1)[0])


def train_step(cfg: Config, student: nn.Module, teacher: VideoViT, lss_loss: LSSLoss, optimizer, schedule: dict,
               video: torch.Tensor, step: int, labels: torch.Tensor | None = None,
               oracle: torch.Tensor | None = None) -> dict:
    """One LSS step on a batch of decoded videos, uint8 (B, 2+L, T, H, W, 3) on the device. `student` is the
    MultiView wrapper (inside DDP under torchrun), `teacher` the EMA VideoViT. labels: (B,) the concept index of each
    video's true class, or None (unlabeled videos): never used by LSS itself, only to measure how often the
    teacher's target is right and, for the videos where `oracle` (B,) bool is set, to replace it (the control).
    Returns log values (averaged over processes, tensors). L = L_CD + lambda_ca L_CA + lambda_up L_UP (lss.md 3.5):
      P_t^i = softmax((s_t^i - c) / tau_t)      teacher, global views i = 1, 2, category space, no gradient
      P_s^v = softmax(s_s^v / tau_s)            student, all 2 + L views v
      L_CD = mean_{i, v != i} H(P_t^i, P_s^v)
      L_CA = mean_{i, v != i} H(P_t^i, Q~_s^v), Q~ = the student's distribution over descriptions summed per class
      L_UP = KL(U || p-bar),  p-bar = mean over views and the (global) batch of P_s^v
    where s = cosine similarities between the normalised feature and the concept vectors."""
    B, device = video.shape[0], video.device
    student_vit = getattr(student, "module", student).vit  # the plain student inside the MultiView (and DDP) wrappers
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    lr, wd, m, tau_t = (float(schedule[k][step]) for k in ("lr", "wd", "momentum", "tau_t"))
    for i, group in enumerate(optimizer.param_groups):  # (.get: optimizer states saved before the groups had keys)
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("scheduled", i == 0):  # the decayed groups (param_groups); biases and 1-d params stay at 0
            group["weight_decay"] = wd
    # views: augmentation drawn from a generator seeded by the step (and rank), drop-path masks likewise
    g = torch.Generator().manual_seed(stream_seed(cfg, step, rank))
    views = make_views(video, cfg, *view_augmentations(cfg), g)  # [(2B, T, 3, S, S), (L*B, T_l, 3, s, s)]
    torch.manual_seed(stream_seed(cfg, step, rank, stream=1))
    use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        s_feats = torch.cat(student(views)).split(B)  # 2 + L views, each (B, E)
        with torch.no_grad():
            t_feats = teacher(views[0]).split(B)  # the 2 global views, each (B, E)
    truth = None if oracle is None else torch.where(oracle, labels, -1)  # (B,) the oracle's videos, -1 elsewhere
    loss, terms, targets, t_cat, s_cat = lss_loss(t_feats, s_feats, tau_t, truth)
    # diagnostics, from the same centre the loss used. t_entropy = mean H(P_t), t_batch_entropy = H(mean P_t), and
    # t_mi = their difference = the mutual information between the video and the teacher's concept (0: the teacher
    # gives every video the same distribution). Collapse onto one concept: both entropies -> 0; uniform collapse:
    # both -> log K; in either case t_mi -> 0, while a teacher that discriminates has t_mi up to log K.
    with torch.no_grad():
        P = torch.cat(teacher_probs(t_cat, lss_loss.center, tau_t))  # (2B, K)
        Ps = torch.cat([F.softmax(s / cfg.tau_s, dim=-1) for s in s_cat])  # ((2+L)B, K)
        scalars = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()},
                   "t_entropy": -(P * P.clamp_min(1e-12).log()).sum(-1).mean(),
                   "t_max_prob": P.max(-1).values.mean(),
                   "s_entropy": -(Ps * Ps.clamp_min(1e-12).log()).sum(-1).mean()}
        if labels is not None:  # how often the teacher's top concept, and the target's, is the true class
            scalars["teacher_acc"] = (P.argmax(-1) == labels.repeat(2)).float().mean()
            scalars["target_acc"] = (torch.cat(targets).argmax(-1) == labels.repeat(2)).float().mean()
        packed = torch.cat([torch.stack(list(scalars.values())), P.mean(0)])  # one all-reduce for all of them
        if distributed:
            dist.all_reduce(packed, op=dist.ReduceOp.AVG)
        stats = dict(zip(scalars, packed[:len(scalars)]))  # every process the same values, still on the device
        p_mean = packed[len(scalars):]  # (K,) batch-mean teacher distribution
        h_mean = -(p_mean * p_mean.clamp_min(1e-12).log()).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(list(student_vit.parameters()), cfg.clip_grad)
    optimizer.step()
    ema_update(teacher, student_vit, m)  # teacher <- m teacher + (1 - m) student
    lss_loss.update_center(t_cat)  # c <- m_c c + (1 - m_c) mean s_t, after the loss used the old one (DINO/SVT)
    # log values as tensors on the device (the loop reads them every --log-every steps: no step waits for the GPU)
    return dict(**stats, t_batch_entropy=h_mean, t_mi=h_mean.double() - stats["t_entropy"].double(),
                grad_norm=grad_norm)


# ----------------------------------------------------------------------------- training
# The loop reads like DINO's main_dino.py: the start (the CLIP), the data, the networks, the concept spaces and the
# loss on them, the optimizer and its schedules, then one train_step per batch. The plumbing every training run
# shares (processes, resuming, log lines, checkpoints, Ctrl-C and SIGTERM) is in training.py.

def clip_config_from_flags(cfg: Config) -> CLIPConfig:
    """The CLIP that --init random builds. Heads = width // 64 (at least 1): the rule load_clip infers them by."""
    return CLIPConfig(embed_dim=cfg.embed_dim, image_resolution=cfg.size, vision_layers=cfg.layers,
                      vision_width=cfg.width, vision_patch_size=cfg.patch, vision_heads=max(1, cfg.width // 64),
                      text_width=cfg.text_width, text_heads=max(1, cfg.text_width // 64), text_layers=cfg.text_layers)


def build_networks(cfg: Config, clip: CLIP, device, print0) -> tuple[VideoViT, VideoViT, CLIP]:
    """The student (a VideoViT from the CLIP's visual tower), the teacher (its copy, no gradient: the EMA of the
    student from then on) and the frozen text tower."""
    arch = clip.cfg
    if cfg.init != "random" and cfg.size != arch.image_resolution:
        print0(f"note: --size {cfg.size} differs from the CLIP's input resolution {arch.image_resolution}: its "
               f"position embeddings are resized (nearest); for the paper's setting use --size 224 --local-size 96")
    for name, side in (("size", cfg.size), ("local-size", cfg.local_size)):
        if side % arch.vision_patch_size:
            raise SystemExit(f"error: --{name} {side} is not a multiple of the patch size {arch.vision_patch_size}")
    student = VideoViT.from_clip(clip.visual, cfg.cls_mode, cfg.frames, cfg.drop_path).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False).eval()  # starts equal to the student
    return student, teacher, text_tower(clip)


def tiny_clip(run) -> str:
    """--init tiny: the tiny CLIP that scripts/pretrain_clip.py pretrains on captioned stills (its defaults), made
    once (minutes, its progress bar on the console) and then read from the cache. It runs as a separate process:
    lss.py imports nothing from scripts/."""
    script = Path(__file__).resolve().parent / "scripts" / "pretrain_clip.py"
    r = subprocess.run([sys.executable, str(script), "--path-only"], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"error: pretraining the tiny CLIP failed (python {script} --path-only, exit {r.returncode}); "
                         f"its messages are above")
    return r.stdout.strip().splitlines()[-1]


def the_start(cfg: Config, run: training.Run, ckpt: dict | None) -> tuple[Config, CLIP | None]:
    """The CLIP that LSS adapts (--init tiny: pretrained here once; clip: a file; random: none yet) and the
    temperatures that go with it. A resumed run takes both from its checkpoint."""
    if ckpt is not None:
        saved = ckpt["config"]  # auto temperatures and the tiny CLIP's path: the values the run started with
        cfg = replace(cfg, tau_s=cfg.tau_s or saved["tau_s"], tau_t=cfg.tau_t or saved["tau_t"],
                      clip=cfg.clip or saved.get("clip"))
        training.check_resume_config(saved, cfg, ARCH_KEYS)
        return cfg, None
    if cfg.init == "tiny":  # pretrained once (first process), then read from the cache by every process
        paths = [tiny_clip(run) if run.master else None]
        if run.world > 1:
            dist.broadcast_object_list(paths, src=0)
        cfg = replace(cfg, clip=paths[0])
    try:
        clip = load_clip(cfg.clip) if cfg.init != "random" else None
    except (OSError, RuntimeError, ValueError) as e:  # missing, unreadable or not a CLIP: one line, the path in it
        raise SystemExit(f"error: {e}") from e
    return resolve_temperatures(cfg, clip), clip


def truth_of(cfg: Config, videos: data.VideoList, names: list, device) -> tuple:
    """Labelled videos: each class's index in the category space (to measure how often the teacher's target is
    right; LSS itself never sees it), and for --targets oracle the fixed subset of the videos whose target is the
    true class. (None, None) for unlabeled videos."""
    concept_of, oracle_videos = None, None
    if videos.classes:
        texts = [class_to_text(n) for n in names]
        concept_of = torch.tensor([texts.index(class_to_text(c)) for c in videos.classes], device=device)
    if cfg.targets == "oracle":
        chosen = np.random.default_rng([cfg.seed, 7]).permutation(len(videos))[:round(cfg.oracle_fraction * len(videos))]
        oracle_videos = torch.zeros(len(videos), dtype=torch.bool, device=device)
        oracle_videos[torch.from_numpy(chosen)] = True
    return concept_of, oracle_videos


def restore(ckpt: dict, student_vit, teacher, optimizer, lss_loss, skipped: list) -> tuple[int, list]:
    """A resumed run's state: both networks, the optimizer, the centre and the prior's average; -> (step, skipped)."""
    student_vit.load_state_dict(ckpt["student"])
    teacher.load_state_dict(ckpt["teacher"])
    optimizer.load_state_dict(ckpt["optimizer"])
    lss_loss.center = ckpt["center"].to(lss_loss.C_cat.device)
    lss_loss.p_bar_prev = ckpt["p_bar"].to(lss_loss.C_cat.device) if ckpt.get("p_bar") is not None else None
    return ckpt["step"], list(ckpt.get("skipped", [])) or skipped


def train(cfg: Config):
    run, ckpt = training.start(cfg, "lss")
    device = run.device
    cfg, clip = the_start(cfg, run, ckpt)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    # data: every video gives 2 global + L local views (MultiViewSampler), decoded in the loader's workers
    videos, cfg, skipped = training.training_videos(cfg, run, lambda new, old: (
        ": the uniform prior then averages over fewer videos per step"))
    dataset = data.VideoDataset(videos, MultiViewSampler(cfg.frames, cfg.stride, cfg.local_views, cfg.local_stride),
                                canvas=cfg.canvas, resample=True, min_frames=cfg.frames)
    loader = data.make_loader(dataset, cfg.batch_size, cfg.workers, shuffle=True, drop_last=True, seed=cfg.seed,
                              rank=run.rank, world_size=run.world)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    # networks: student, EMA teacher, frozen text tower. A resumed run's CLIP is a skeleton its checkpoint fills;
    # --init random builds one from the flags (seeded: the same on every process)
    if clip is None:
        clip = CLIP(CLIPConfig(**ckpt["config"]["clip_arch"]) if ckpt is not None else clip_config_from_flags(cfg))
    student_vit, teacher, text = build_networks(cfg, clip, device, run.print)
    config = {**asdict(cfg), "clip_arch": asdict(clip.cfg)}  # what build_backbone / zero-shot rebuild them from
    del clip
    # the concept spaces and the loss on them
    names = category_names(cfg.concepts, videos.classes)
    if ckpt is not None:
        if list(ckpt["concept_names"]) != names:
            raise SystemExit(f"error: the checkpoint in --out was trained with another category space "
                             f"({len(ckpt['concept_names'])} names vs {len(names)} now): same --dataset/--concepts, "
                             f"or another --out")
        text.load_state_dict(ckpt["text"])
    lss_loss = LSSLoss(run_concepts(cfg, text, names, run.out, device, run.rank, run.world, run.print), cfg)
    concept_of, oracle_videos = truth_of(cfg, videos, names, device)
    # optimizer and schedules (the lr scales linearly with the global batch, from 256 videos)
    optimizer = torch.optim.AdamW(param_groups(student_vit, cfg.new_lr_scale), lr=0.0, weight_decay=cfg.weight_decay)
    global_batch = cfg.batch_size * run.world
    schedule = make_schedules(cfg, steps_per_epoch, cfg.lr * global_batch / 256)
    start_step = 0
    if ckpt is not None:
        start_step, skipped = restore(ckpt, student_vit, teacher, optimizer, lss_loss, skipped)
        run.print(f"resumed from {run.checkpoint_path} at step {start_step} (epoch {start_step / steps_per_epoch:.2f})")
        training.note_data_change(run, ckpt, len(videos), steps_per_epoch, total_steps)
        del ckpt
    if cfg.compile:  # in place: state-dict keys, the EMA update and the checkpoint stay as without it; dynamic=False:
        student_vit.compile(dynamic=False)  # one static graph per view shape (global, local, zero-shot)
        teacher.compile(dynamic=False)
    student = MultiView(student_vit)
    if run.world > 1:
        student = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    run.print(f"LSS | {videos.name}: {len(videos)} videos | {cfg.init} init, ViT {config['clip_arch']['vision_width']}w"
              f" x {config['clip_arch']['vision_layers']} ({sum(p.numel() for p in student_vit.parameters()) / 1e6:.2f}M"
              f" params), cls {cfg.cls_mode} | concepts '{cfg.concepts}': K={len(names)} (log K = "
              f"{math.log(len(names)):.2f}), M={lss_loss.C_desc.shape[0]} descriptions | tau_s {cfg.tau_s:g}, tau_t "
              f"{cfg.tau_t:g} | {run.world} process(es) on {device} | global batch {global_batch} videos x "
              f"{2 + cfg.local_views} views | lr {schedule['lr'].max():.3g} | {steps_per_epoch} steps/epoch x "
              f"{cfg.epochs} epochs")
    training.write_config(run, config)
    advice = "a lower --lr, higher --tau-s/--tau-t, or --amp off"

    def checkpoint(step):
        mean.check_finite(step, advice)  # never save weights that a NaN has reached
        if run.master:
            t_sd = teacher.state_dict()  # shared storage: "backbone" and "teacher" are written once
            training.save_checkpoint(run.checkpoint_path, {
                "method": "lss", "config": config, "step": step, "epoch": step / steps_per_epoch,
                "backbone": {"vit." + k: v for k, v in t_sd.items()},  # build_backbone's keys: the TEACHER (SVT)
                "student": student_vit.state_dict(), "teacher": t_sd, "optimizer": optimizer.state_dict(),
                "center": lss_loss.center.cpu(),
                "p_bar": None if lss_loss.p_bar_prev is None else lss_loss.p_bar_prev.cpu(),
                "text": text.state_dict(), "concept_names": list(names),
                "skipped": sorted(set(skipped)), "num_videos": len(videos), "steps_per_epoch": steps_per_epoch,
                "versions": {"torch": str(torch.__version__)}})
        run.barrier()

    # zero-shot on the dataset's own test split with its class names: the teacher before training, both after
    zs = zero_shot_during_training(cfg, text, config, run)
    start_zs = zs(0, teacher)["top1"] if zs and start_step == 0 else logged_start_zero_shot(run.out)
    # the loop: a step per batch, a log line every --log-every steps, a checkpoint at every epoch's end
    # Prefetcher: on a GPU the next batch's copy to the device runs on a side stream while this step computes
    steps = training.Steps(training.Prefetcher(loader, device), start_step, total_steps, steps_per_epoch,
                           cfg.max_steps, cfg.batch_size)
    mean = training.Mean(start_step)
    student.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not run.master, unit="step", dynamic_ncols=True)
    with bar, training.interruptible(run, lambda: checkpoint(steps.step)):
        for step, batch in steps:
            training.report_bad(batch, skipped, run)
            video = batch["video"]  # (B, 2+L, T, H, W, 3) uint8, on the device (Prefetcher)
            labels = None if concept_of is None else concept_of[batch["label"].to(device)]  # (B,) never for LSS itself
            oracle = None if oracle_videos is None else oracle_videos[batch["index"].to(device)]  # (B,) the control
            mean.add(train_step(cfg, student, teacher, lss_loss, optimizer, schedule, video, step, labels, oracle))
            bar.update(1)
            if steps.log_due(cfg.log_every):
                mean.check_finite(step + 1, advice)
                n = mean.n
                rec = dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), **mean.read(),
                           **steps.timing((2 + cfg.local_views) * global_batch, n), skipped=len(set(skipped)),
                           **{k: float(schedule[k][step]) for k in ("lr", "wd", "momentum", "tau_t")})
                bar.set_postfix(loss=f"{rec['loss']:.3f}", cd=f"{rec['cd']:.2f}", up=f"{rec['up']:.3f}",
                                H_t=f"{rec['t_entropy']:.2f}", clips_s=f"{rec['clips_per_s']:.0f}",
                                wait=f"{rec['data_wait']:.0%}")
                run.log(rec)
            if steps.epoch_end:
                checkpoint(step + 1)
    if steps.step == 0 and not run.checkpoint_path.exists():
        checkpoint(0)  # --epochs 0: the start itself, checkpointed for eval_linear.py (the frozen baseline)
    if zs and steps.step > 0:
        zero_shot_at_the_end(zs, steps.step, student_vit, teacher, start_zs, run)
    ckpt_arg, flags = training.quote(run.checkpoint_path), f" --dataset {cfg.dataset}" if cfg.dataset != "synthetic" else ""
    training.finish(run, skipped, steps.step, (
        f"look: python scripts/neighbours.py --ckpt {ckpt_arg} --out {training.quote(run.out / 'neighbours.png')}"
        if cfg.dataset == "unlabeled" else  # nothing to evaluate on: what the features find similar instead
        f"evaluate: python eval_linear.py --ckpt {ckpt_arg}{flags} --network student\n"
        f"          python lss.py zero-shot --ckpt {ckpt_arg}{flags} --network student"))


def zero_shot_at_the_end(zs, step: int, student_vit, teacher, start_zs: float | None, run: training.Run):
    """Both networks' zero-shot at the end, and the method's claim in the run's own log: the frozen CLIP (step 0)
    against each of them."""
    end = {"student": zs(step, student_vit, "student")["top1"],  # the network the README reports
           "teacher": zs(step, teacher)["top1"]}  # SVT evaluates it; the checkpoint's "backbone"
    if start_zs is not None:
        run.print("zero-shot, the frozen CLIP at step 0 -> now: " + ", ".join(
            f"{k} {start_zs:.1f} -> {v:.1f} ({v - start_zs:+.1f})" for k, v in end.items()))


def logged_start_zero_shot(out) -> float | None:
    """A resumed run's step-0 zero-shot (the frozen CLIP), read back from its log.jsonl; None if it has none."""
    try:
        for line in (Path(out) / "log.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("step") == 0 and "zero_shot_top1" in rec:
                return rec["zero_shot_top1"]
    except (OSError, ValueError):
        pass
    return None


def zero_shot_during_training(cfg: Config, text: CLIP, config: dict, run: training.Run):
    """zs(step, vit, network="teacher"): zero-shot top-1 of `vit` on the dataset's test split by its class names,
    printed and logged; None when there is nothing to evaluate on (unlabeled videos, no test split)."""
    if not cfg.zero_shot_eval:
        return None
    if cfg.dataset == "unlabeled":
        run.print("note: no zero-shot evaluation: it needs labelled test videos, and the training folder has none "
                  "(python lss.py zero-shot --ckpt ... --data LABELLED_ROOT evaluates later)")
        return None
    try:
        test_videos = data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, "test", cfg.synthetic)
    except data.DatasetError as e:
        run.print(f"note: no zero-shot evaluation ({e})")
        return None
    vectors = class_vectors(text, test_videos.classes, "names", TEMPLATES[cfg.templates], cfg.desc_template, cfg.bpe,
                            run.device)

    def zs(step, vit, network="teacher"):
        r = zero_shot_eval(Backbone(config, "proj", vit=vit).to(run.device), vectors, test_videos, cfg.frames,
                           cfg.stride, cfg.size, cfg.canvas, cfg.test_clips, cfg.batch_size, cfg.workers, run.device,
                           run.rank, run.world, progress=run.master)
        run.print(f"zero-shot ({network}, step {step}): top-1 {r['top1']}%  top-5 {r['top5']}%  on {r['num_test']} "
                  f"{test_videos.name} videos, {r['num_classes']} class names (chance {100 / r['num_classes']:.1f}%)")
        prefix = "zero_shot" if network == "teacher" else "student_zero_shot"
        run.log({"step": step, f"{prefix}_top1": r["top1"], f"{prefix}_top5": r["top5"],
                 f"{prefix}_num_test": r["num_test"]})
        return r
    return zs


# ----------------------------------------------------------------------------- zero-shot evaluation
# lss.md section 6 [D]: each test video -> K uniformly spaced clips (the global view's frames and stride) x 1 centre
# crop (short side scaled to --size); the teacher's projected feature of each clip is L2-normalised, averaged over
# the clips and re-normalised; the prediction is the class whose concept vector (class name x templates, from the
# checkpoint's text tower) has the largest cosine similarity. Top-1 / top-5 in percent over decodable videos.

@torch.no_grad()
def video_features(backbone: Backbone, video: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, K, T, H, W, 3), K clips per video -> (B, E) unit features: each clip centre-cropped to `size`,
    embedded, L2-normalised; the clips averaged and re-normalised."""
    B, K = video.shape[:2]
    x = data.spatial_crops(data.to_bcthw(video.flatten(0, 1)), size, 1)  # (B*K, C, T, s, s) in [0, 1]
    with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=video.device.type == "cuda"):
        f = backbone(x)  # (B*K, E)
    return F.normalize(F.normalize(f.float(), dim=-1).view(B, K, -1).mean(1), dim=-1)  # (B, E)


def test_loader(videos: data.VideoList, frames: int, stride: int, canvas, test_clips: int, batch_size: int,
                workers: int, rank=0, world=1):
    """K uniformly spaced clips per video, every video once, unreadable ones returned as failed (not resampled)."""
    dataset = data.VideoDataset(videos, data.UniformClips(frames, stride, test_clips), canvas=canvas, resample=False,
                                min_frames=1)
    return data.make_loader(dataset, batch_size, workers, shuffle=False, drop_last=False, rank=rank,
                            world_size=world)


@torch.no_grad()
def zero_shot_eval(backbone: Backbone, vectors: torch.Tensor, videos: data.VideoList, frames: int, stride: int,
                   size: int, canvas, test_clips: int, batch_size: int, workers: int, device, rank=0, world=1,
                   progress=True) -> dict:
    """backbone with feature 'proj', vectors (C, D) unit rows in the order of videos.classes. Under DDP every
    process takes a shard of the videos and the counts are summed, so every process must call this."""
    loader = test_loader(videos, frames, stride, canvas, test_clips, batch_size, workers, rank, world)
    C = len(videos.classes)
    counts = torch.zeros(3, C, dtype=torch.float64, device=device)  # videos, top-1 hits, top-5 hits per class
    skipped = []
    backbone.eval()
    for batch in tqdm(loader, desc="zero-shot", unit="batch", disable=not progress, dynamic_ncols=True, leave=False):
        for i, msg in zip(batch["failed"], batch["bad"]):
            path = videos.paths[i]
            skipped.append({"path": path, "reason": msg[len(path) + 2:] if msg.startswith(path + ": ") else msg})
        if len(batch["index"]) == 0:
            continue
        f = video_features(backbone, batch["video"].to(device, non_blocking=True), size)  # (B, E)
        top = (f @ vectors.float().t()).topk(min(5, C), dim=-1).indices  # (B, 5)
        labels = batch["label"].to(device)
        counts[0].index_add_(0, labels, torch.ones(len(f), dtype=torch.float64, device=device))
        counts[1].index_add_(0, labels, (top[:, 0] == labels).double())
        counts[2].index_add_(0, labels, (top == labels[:, None]).any(-1).double())
    if world > 1:
        dist.all_reduce(counts)
        gathered = [None] * world
        dist.all_gather_object(gathered, skipped)
        skipped = [s for part in gathered for s in part]
    counts = counts.cpu()
    n = int(counts[0].sum().item())
    pct = lambda hits, total: round(100.0 * float(hits) / float(total), 2) if total else None  # noqa: E731
    return {"top1": pct(counts[1].sum(), n), "top5": pct(counts[2].sum(), n), "num_test": n, "num_classes": C,
            "skipped": skipped, "per_class": {c: pct(counts[1, k], counts[0, k]) for k, c in enumerate(videos.classes)}}


@torch.no_grad()
def name_videos(backbone: Backbone, vectors: torch.Tensor, names: list, videos: data.VideoList, frames: int,
                stride: int, size: int, canvas, test_clips: int, batch_size: int, workers: int, device, tau: float,
                top: int = 3) -> tuple[list, list]:
    """Name videos by text, labels or none: each video's `top` names among `names` (vectors (N, E) unit rows, in
    their order), with the probability softmax(cosine / tau) over all the names, and the cosine itself.
    Returns ([{"path", "names", "probs", "cosines"}] in the folder's order, [{"path", "reason"}] skipped)."""
    loader = test_loader(videos, frames, stride, canvas, test_clips, batch_size, workers)
    rows, skipped = [], []
    backbone.eval()
    for batch in tqdm(loader, desc="naming", unit="batch", dynamic_ncols=True, leave=False):
        for i, msg in zip(batch["failed"], batch["bad"]):
            skipped.append({"path": videos.paths[i], "reason": msg})
        if len(batch["index"]) == 0:
            continue
        cos = video_features(backbone, batch["video"].to(device, non_blocking=True), size) @ vectors.float().t()
        probs = F.softmax(cos / tau, dim=-1)  # (B, N)
        p, k = probs.topk(min(top, len(names)), dim=-1)  # (B, top)
        for j, i in enumerate(batch["index"].tolist()):
            rows.append({"path": videos.paths[i], "names": [names[n] for n in k[j].tolist()],
                         "probs": [round(v, 4) for v in p[j].tolist()],
                         "cosines": [round(v, 4) for v in cos[j, k[j]].tolist()]})
    return rows, skipped


def read_names(spec: str) -> list:
    """--names: "a, b, c", or the path of a text file with one name per line (blank lines and # comments skipped)."""
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            names = [line.split("#")[0].strip() for line in f]
    else:
        names = [n.strip() for n in spec.split(",")]
    names = list(dict.fromkeys(n for n in names if n))  # in order, each once
    if len(names) < 2:
        raise SystemExit(f"error: --names needs at least two names (comma-separated, or a file with one per "
                         f"line), got {names}")
    return names


def name_videos_command(zc, backbone, text, videos, templates, frames, stride, size, canvas, tau, device, what,
                        root) -> dict:
    """lss.py zero-shot --names ...: the CSV of every video's best names and a picture of a few of them."""
    import csv
    names = read_names(zc.names)
    vectors = build_concept_space(text.to(device), names, TEMPLATES[templates], zc.bpe)  # (N, E): names x templates
    print(f"naming | {what} | {videos.name}: {len(videos)} videos | {len(names)} names x {len(TEMPLATES[templates])} "
          f"{templates} templates | {zc.test_clips} clips x {frames} frames | {device}")
    rows, skipped = name_videos(backbone, vectors, names, videos, frames, stride, size, canvas, zc.test_clips,
                                zc.batch_size, zc.workers, device, tau, zc.top)
    rel = (lambda p: os.path.relpath(p, root)) if root else os.path.basename  # noqa: E731
    Path(zc.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(zc.csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"] + [c for i in range(1, min(zc.top, len(names)) + 1) for c in (f"name{i}", f"prob{i}")])
        for r in rows:
            w.writerow([rel(r["path"])] + [v for n, p in zip(r["names"], r["probs"]) for v in (n, f"{p:.4f}")])
    for r in rows[:5]:
        print(f"  {rel(r['path'])}: " + ", ".join(f"{n} {p:.2f}" for n, p in zip(r["names"], r["probs"])))
    picture = []
    for r in rows[:zc.picture_videos]:  # 4 evenly spaced frames of each video, its names above them
        n = data.probe(r["path"]).num_frames
        frames_ = data.read_frames(r["path"], np.linspace(0, n - 1, 4).round().astype(int), size=(96, 96)).numpy()
        picture.append((f"{rel(r['path'])}: " + "  |  ".join(f"{n} {p:.2f}" for n, p in zip(r["names"], r["probs"])),
                        list(frames_), None))
    if picture:
        Path(zc.picture).parent.mkdir(parents=True, exist_ok=True)
        training.image_grid(picture).save(zc.picture)
    for s_ in skipped:
        print(f"  SKIPPED {s_['path']}: {s_['reason']}")
    print(f"named {len(rows)} videos ({len(skipped)} skipped): wrote {zc.csv}" + (f" and {zc.picture}" if picture else ""))
    return {"names": names, "videos": rows, "skipped": skipped, "csv": zc.csv,
            "picture": zc.picture if picture else None}


# The command line: python lss.py zero-shot --ckpt ... (or --clip ... for the frozen CLIP baseline).

@dataclass
class ZeroShotConfig:
    ckpt: str | None = None         # an lss.py checkpoint: its network (--network) and its text tower are evaluated
    network: str = "teacher"        # --ckpt: teacher (the checkpoint's "backbone", SVT's) | student (what the README reports)
    clip: str | None = None         # instead of --ckpt: CLIP weights evaluated frozen (frame-averaged CLIP baseline)
    dataset: str | None = None      # auto | synthetic | folder | ucf101 | hmdb51 | kinetics; default: the checkpoint's
    data: str | None = None         # dataset root
    annotations: str | None = None  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int = 0                   # UCF101/HMDB51 split; 0: the checkpoint's (or 1)
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # each knob: the checkpoint's unless given (--clip: lss.py's)
    split: str = "test"             # which split to classify: test | train
    frames: int = 0                 # frames per clip; 0: the checkpoint's --frames (--clip: 8)
    stride: int = 0                 # frames between a clip's frames; 0: the checkpoint's --stride (--clip: 4)
    size: int = 0                   # centre-crop side; 0: the checkpoint's --size (--clip: the CLIP's resolution)
    canvas: tuple = (0, 0)          # decode size H W; 0 0: the checkpoint's --canvas (--clip: size x size)
    test_clips: int = 4             # uniformly spaced clips per video, features averaged
    templates: str = ""             # kinetics | ucf101 | synthetic | single; empty: the checkpoint's (--clip: by dataset)
    class_vectors: str = "names"    # names (class names x templates) | descriptions (mean of the class's descriptions)
    cls_mode: str = "per_frame"     # --clip only: per_frame (exactly the frame-averaged CLIP) | shared
    batch_size: int = 8             # videos per forward pass
    workers: int = 2                # DataLoader decode processes
    device: str = "auto"            # auto | cpu | cuda
    bpe: str | None = None          # CLIP's BPE vocabulary file (default: the copy inside the clip-anytorch package)
    json: str | None = None         # write the result here
    # naming videos by text (any folder, labelled or not): each video's best names instead of an accuracy
    names: str | None = None        # "a, b, c" or a text file with one name per line: name every video of --data by them
    top: int = 3                    # --names: how many names per video go into the CSV
    csv: str = "names.csv"          # --names: one row per video: path, then name and probability for its best names
    picture: str = "names.png"      # --names: a few videos (frames) with their best names
    picture_videos: int = 8         # --names: how many videos the picture shows


def zero_shot(zc: ZeroShotConfig) -> dict:
    if bool(zc.ckpt) == bool(zc.clip):
        raise SystemExit("error: give exactly one of --ckpt (an lss.py checkpoint) or --clip (frozen CLIP weights)")
    if zc.class_vectors not in ("names", "descriptions") or zc.split not in ("train", "test") \
            or zc.network not in ("teacher", "student"):
        raise SystemExit("error: --class-vectors must be names|descriptions, --split train|test and "
                         "--network teacher|student")
    device = training.resolve_device(zc.device)
    t0 = time.perf_counter()
    if zc.ckpt:
        ckpt = training.load_checkpoint(zc.ckpt)
        if ckpt.get("method") != "lss" or "text" not in ckpt:
            raise SystemExit(f"error: {zc.ckpt} is not an lss.py checkpoint (method {ckpt.get('method')!r})")
        tcfg = dict(ckpt["config"])
        backbone = Backbone(tcfg, "proj")
        backbone.load_state_dict(ckpt["backbone"] if zc.network == "teacher" else student_backbone_state(ckpt))
        text = text_tower(CLIP(CLIPConfig(**tcfg["clip_arch"])))
        text.load_state_dict(ckpt["text"])
        what, step = f"{zc.network} of {zc.ckpt}", ckpt.get("step")
        del ckpt
    else:
        clip = load_clip(zc.clip)
        res = clip.cfg.image_resolution
        tcfg = {"clip_arch": asdict(clip.cfg), "frames": zc.frames or 8, "stride": zc.stride or 4,
                "cls_mode": zc.cls_mode, "size": zc.size or res, "canvas": [zc.size or res] * 2,
                "templates": "", "desc_template": "{desc}", "dataset": "synthetic",
                "tau_s": 1 / clip.logit_scale.exp().item()}
        vit = VideoViT.from_clip(clip.visual, zc.cls_mode, tcfg["frames"])  # temporal branch a no-op: image CLIP
        backbone = Backbone(tcfg, "proj", vit=vit)
        text = text_tower(clip)
        what, step = f"frozen CLIP {zc.clip} (frame-averaged, cls {zc.cls_mode})", None
    if zc.dataset is None and zc.data and tcfg.get("dataset", "synthetic") in ("synthetic", "folder", "unlabeled"):
        zc = replace(zc, dataset="auto")  # --data alone names another folder: its contents decide (as eval_linear.py)
    if zc.dataset is None:
        dataset, root, ann = tcfg.get("dataset", "synthetic"), zc.data or tcfg.get("data"), \
            zc.annotations or tcfg.get("annotations")
        fold = zc.fold or tcfg.get("fold", 1)
    else:
        dataset, root, ann, fold = zc.dataset, zc.data, zc.annotations, zc.fold or 1
    world = replace(data.synthetic_world(tcfg) if zc.ckpt else Config().synthetic, **zc.synthetic)
    frames, stride = zc.frames or tcfg["frames"], zc.stride or tcfg["stride"]
    size = zc.size or tcfg["size"]
    canvas = tuple(zc.canvas) if all(zc.canvas) else tuple(tcfg["canvas"])
    try:
        dataset, why = data.resolve_dataset(dataset, root)
        if why:
            print(why)
        if not zc.names:
            data.require_labels(dataset, root, "zero-shot classification")
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}")
    templates = zc.templates or tcfg.get("templates") or DATASET_TEMPLATES[dataset]
    if templates not in TEMPLATES:
        raise SystemExit(f"error: --templates must be one of {list(TEMPLATES)}")
    try:
        videos = data.load_split(dataset, root, ann, fold, "train" if dataset == "unlabeled" else zc.split,
                                 world)
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}")
    backbone.to(device)
    if zc.names:
        tau = tcfg.get("tau_s") or 1 / CLIP_LOGIT_SCALE  # the CLIP's own temperature (its 1 / exp(logit_scale))
        return name_videos_command(zc, backbone, text, videos, templates, frames, stride, size, canvas, tau, device,
                                   what, root)
    vectors = class_vectors(text, videos.classes, zc.class_vectors, TEMPLATES[templates],
                            tcfg.get("desc_template", "{desc}"), zc.bpe, device)
    print(f"zero-shot | {what} | {videos.name}: {len(videos)} videos, {len(videos.classes)} classes "
          f"({zc.class_vectors}, {templates} templates) | {zc.test_clips} clips x {frames} frames (stride {stride}) "
          f"x 1 centre crop {size}px | {device}")
    r = zero_shot_eval(backbone, vectors, videos, frames, stride, size, canvas, zc.test_clips, zc.batch_size,
                       zc.workers, device)
    missing = [{"path": p, "reason": "listed in the split file but not on disk"} for p in videos.missing]
    result = {"top1": r["top1"], "top5": r["top5"], "num_test": r["num_test"], "num_classes": r["num_classes"],
              "skipped": missing + r["skipped"], "per_class": r["per_class"], "ckpt": zc.ckpt, "clip": zc.clip,
              "step": step, "method": "lss", "split": zc.split,
              "dataset": {"dataset": dataset, "data": root, "annotations": ann, "fold": fold,
                          "synthetic": asdict(world) if dataset == "synthetic" else None},
              "views": {"frames": frames, "stride": stride, "size": size, "canvas": list(canvas),
                        "test_clips": zc.test_clips, "crops": 1, "average": "normalised features"},
              "class_vectors": zc.class_vectors, "templates": templates,
              "seconds": round(time.perf_counter() - t0, 2)}
    print(f"top-1 {result['top1']}%  top-5 {result['top5']}%  | {result['num_test']} videos "
          f"(skipped {len(result['skipped'])}) | chance {100 / result['num_classes']:.1f}%")
    if zc.json:
        Path(zc.json).parent.mkdir(parents=True, exist_ok=True)
        Path(zc.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {zc.json}")
    return result


# ----------------------------------------------------------------------------- appendix: CLIP's BPE tokenizer
# CLIP's byte-level BPE, as in openai/CLIP clip/simple_tokenizer.py. Byte level means every string is encodable:
# text -> UTF-8 bytes -> each byte mapped to a printable unicode char -> words split by a regex -> BPE merges.

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = 49406, 49407  # <|startoftext|>, <|endoftext|>; EOT is the largest id, which text pooling relies on


def find_bpe_vocab(path=None):
    """Path of CLIP's BPE merges file: `path` if given, else the copy shipped inside an installed CLIP package.

    The file (OpenAI's, MIT licence) comes with the dependency clip-anytorch, the lightest package that ships it
    (1.4 MB; open_clip_torch, which the tests use as the reference CLIP, ships the same bytes but pulls in timm and
    huggingface_hub). We only read the file: neither package is imported."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"BPE vocabulary file not found: {path}")
        return path
    # find_spec locates the package directory without importing it
    for pkg in ("clip", "open_clip"):  # clip-anytorch (or openai/CLIP), open_clip_torch: same file, same bytes
        spec = importlib.util.find_spec(pkg)
        for d in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isfile(os.path.join(d, BPE_FILE)):
                return os.path.join(d, BPE_FILE)
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary '{BPE_FILE}' was not found. It ships inside clip-anytorch, a dependency of this "
        f"project: run `pip install -e .` in the repository, or pass the file's path explicitly (--bpe PATH).")


@lru_cache()
def bytes_to_unicode():
    # Printable bytes map to themselves; the other 68 (control chars, space, ...) map to chr(256+n), so that no
    # BPE symbol is whitespace or a control character and the mapping stays reversible.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    """Set of adjacent symbol pairs in a word (a tuple of symbols)."""
    return set(zip(word[:-1], word[1:]))


def clean_text(text):
    text = ftfy.fix_text(text)  # repairs mojibake ("cafÃ©" -> "café"), as OpenAI's tokenizer does
    text = html.unescape(html.unescape(text)).strip()  # twice: web captions are often double-escaped ("&amp;amp;")
    text = regex.sub(r"\s+", " ", text).strip()  # collapse runs of spaces, tabs, newlines
    return text.lower()


class BPETokenizer:
    def __init__(self, bpe_path):
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]  # line 0 is "#version: 0.2"
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]  # "</w>" marks a word's end
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}  # 256 + 256 + 48894 + 2 = 49408 ids
        assert self.encoder["<|startoftext|>"] == SOT and self.encoder["<|endoftext|>"] == EOT
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}  # lower rank = merged earlier in BPE training
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        # contractions, runs of letters, single digits, runs of other non-space symbols (\p{..} needs `regex`)
        self.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                 r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def bpe(self, token):
        """Greedy BPE on one pre-token: repeatedly merge the adjacent pair with the lowest merge rank."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(first)
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for token in self.pat.findall(clean_text(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids


@lru_cache(maxsize=4)
def get_tokenizer(bpe_path=None):
    return BPETokenizer(find_bpe_vocab(bpe_path))  # ~1 s to build the merge table, so build it once per file


def tokenize(texts, context_length=77, bpe_path=None):
    """list[str] -> LongTensor (N, context_length): SOT + tokens + EOT, zero-padded; too long -> cut, last = EOT."""
    if isinstance(texts, str):
        texts = [texts]
    tok = get_tokenizer(bpe_path)
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [SOT] + tok.encode(text) + [EOT]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = EOT  # keep EOT: the text feature is read at the EOT position
        out[i, :len(ids)] = torch.tensor(ids)
    return out


# ----------------------------------------------------------------------------- appendix: loading CLIP weights
# OpenAI's files come in two forms: a plain state dict, or the TorchScript archive they publish (ViT-B-16.pt).

def _is_torchscript_archive(path):
    # TorchScript archives are zip files holding "<name>/constants.pkl" and "<name>/code/"; plain torch.save zips don't
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def load_clip(path):
    """Load CLIP from an OpenAI-layout state dict (plain, or under 'state_dict'/'model'), or OpenAI's JIT archive."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    if _is_torchscript_archive(path):
        # OpenAI's ViT-B-16.pt is a TorchScript archive, which torch.load(weights_only=True) refuses. This is the one
        # place that is not weights_only: torch.jit.load does not run arbitrary pickled Python (unlike torch.load
        # with weights_only=False), but it does deserialize TorchScript code that runs in the TorchScript interpreter
        # when the module is called. We only call .state_dict() and never run the module, yet a hostile archive is
        # still a parser attack surface: only load archives you trust (e.g. downloaded from OpenAI's own URL).
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit as deprecated; nothing the user can act on
            warnings.simplefilter("ignore", FutureWarning)
            sd = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)  # refuses pickles that would run code
        except Exception as e:
            raise RuntimeError(f"{path}: torch.load(weights_only=True) refused or failed to read this file; "
                               f"expected a CLIP state dict (tensors only) or OpenAI's TorchScript .pt") from e
        if isinstance(sd, dict) and ("state_dict" in sd or "model" in sd) and "visual.conv1.weight" not in sd:
            sd = sd.get("state_dict", sd.get("model"))
    if not isinstance(sd, dict) or not any(k.endswith("visual.conv1.weight") for k in sd):
        raise ValueError(f"{path} is not an OpenAI-layout CLIP (ViT) state dict: no 'visual.conv1.weight' key")
    if "visual.conv1.weight" not in sd:  # e.g. saved from a DDP-wrapped model: strip "module."
        prefix = next(k for k in sd if k.endswith("visual.conv1.weight"))[:-len("visual.conv1.weight")]
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()  # OpenAI ships fp16: train in fp32
          if k not in ("input_resolution", "context_length", "vocab_size")}  # ints in the JIT file, not weights
    model = CLIP(CLIPConfig.from_state_dict(sd))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        warnings.warn(f"load_clip({path}): {len(missing)} missing keys {missing}; "
                      f"{len(unexpected)} unexpected keys {unexpected}")
    return model


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["zero-shot"]:
        return zero_shot(training.parse_config(
            ZeroShotConfig, argv[1:], "LSS zero-shot classification by class names (or naming any videos with "
            "--names): an lss.py checkpoint (--ckpt) or frozen CLIP (--clip).", overrides=("synthetic",)))
    return train(parse_args(argv))


if __name__ == "__main__":
    training.command(main)
