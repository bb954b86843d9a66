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
the paper could be read (see shared/reference/lss.md section 0). Verified: image-CLIP initialisation of a space-time
backbone, self-distillation, projection onto frozen text "concept" vectors, the two objectives, three benchmarks.
Everything else here is a RECONSTRUCTION, chosen to be as close as possible to the code LSS builds on (SVT for the
backbone/views/EMA, DINO for centring and multi-view pairing, MUST for the uniform prior, openai/CLIP for the model):
  - the divided space-time block and its init (SVT's TimeSformer mapped onto CLIP's layer names);
  - the per-frame CLS mode (our default proposal; SVT's time-averaged CLS is available as cls_mode='shared');
  - every loss formula, the temperatures, the centre, the uniform prior and its weight;
  - the prompt templates and the description set.
Each such place says so in a comment.

Layout: tokenizer -> CLIP (plain PyTorch, OpenAI state-dict layout) -> video ViT -> concept spaces -> losses ->
training. Tensor layout at the video model's boundary is (B, T, C, H, W), CLIP-normalised floats.

Commands
(to be filled in when the training section lands: CPU smoke run on synthetic videos, single GPU, torchrun.)
"""

import gzip
import html
import importlib.util
import math
import os
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import regex
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

try:  # ftfy repairs mojibake ("cafÃ©" -> "café") before tokenizing; OpenAI's tokenizer always runs it
    import ftfy
except ImportError:  # fallback: only Unicode NFC normalisation (what ftfy.fix_text also does); ids may differ
    ftfy = None

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # images must be normalised with CLIP's stats, not ImageNet's
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ----------------------------------------------------------------------------- tokenizer
# CLIP's byte-level BPE, as in openai/CLIP clip/simple_tokenizer.py. Byte level means every string is encodable:
# text -> UTF-8 bytes -> each byte mapped to a printable unicode char -> words split by a regex -> BPE merges.

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = 49406, 49407  # <|startoftext|>, <|endoftext|>; EOT is the largest id, which text pooling relies on


def find_bpe_vocab(path=None):
    """Path of CLIP's BPE merges file: `path` if given, else the copy shipped inside the installed open_clip."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"BPE vocabulary file not found: {path}")
        return path
    # find_spec locates the package directory without importing it (importing open_clip pulls in timm etc.)
    for pkg in ("open_clip", "clip"):  # open_clip_torch, or openai/CLIP / clip-anytorch: same file, same bytes
        spec = importlib.util.find_spec(pkg)
        for d in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isfile(os.path.join(d, BPE_FILE)):
                return os.path.join(d, BPE_FILE)
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary '{BPE_FILE}' was not found. It ships inside the open_clip_torch wheel: "
        f"`pip install open_clip_torch`, or pass the file's path explicitly (--bpe PATH).")


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
    text = ftfy.fix_text(text) if ftfy is not None else unicodedata.normalize("NFC", text)
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


def resize_pos_embed(pos, grid):
    """(1+g*g, D) CLIP positional embedding -> (1+grid*grid, D). Nearest, as SVT does for its 96 px local views
    (bicubic, timm's choice, would be smoother; nearest keeps every value a pretrained one)."""
    g = round((pos.shape[0] - 1) ** 0.5)
    if g == grid:
        return pos
    patch_pos = rearrange(pos[1:], "(h w) d -> 1 d h w", h=g)  # (1, D, g, g)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="nearest")  # (1, D, grid, grid)
    return torch.cat([pos[:1], rearrange(patch_pos, "1 d h w -> (h w) d")], dim=0)  # (1+grid*grid, D)


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
        time = self.time_embed
        if T != time.shape[1]:  # nearest resize over time, as SVT does for other clip lengths
            time = rearrange(F.interpolate(rearrange(time, "1 t d -> 1 d t"), size=T, mode="nearest"), "1 d t -> 1 t d")
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


# ----------------------------------------------------------------------------- concept spaces
# Fixed "concept" vectors from the frozen CLIP text tower, lss.md 3.1-3.3. They replace DINO's learned prototype
# head: a feature's logits are its cosine similarities to these vectors. Computed once; text tower not needed later.

# openai/CLIP data/prompts.md, Kinetics700: 4 prefixes x 7 person/action phrasings ("a example" sic, as in the source)
KINETICS_TEMPLATES = [f"{prefix} {phrase}" for prefix in ("a photo of", "a video of", "a example of",
                                                           "a demonstration of")
                      for phrase in ("{}.", "a person {}.", "a person using {}.", "a person doing {}.",
                                     "a person during {}.", "a person performing {}.", "a person practicing {}.")]
DEFAULT_TEMPLATES = ["a video of a person {}."]  # lss.md 3.2 fallback: one prompt, 28x cheaper to build


def class_to_text(name):
    """Dataset label -> prompt text: 'ApplyEyeMakeup' -> 'apply eye makeup', 'brush_hair' -> 'brush hair'."""
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


def concept_distillation_loss(teacher_sims, student_sims, center, tau_t, tau_s):
    """L_CD = mean_{i, v != i} H(P_t^i, P_s^v), P_s^v = softmax(s_s^v / tau_s), over the category space.
    teacher_sims: list of (B, K), one per global view; student_sims: list of (B, K), one per student view."""
    return _cross_view_ce(teacher_probs(teacher_sims, center, tau_t),
                          [F.log_softmax(s / tau_s, dim=-1) for s in student_sims])


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


def concept_alignment_loss(teacher_cat_sims, student_desc_sims, assign, K, tau_t, tau_s, center, target="class"):
    """Ties descriptions (attributes) to actions across views.

    target='class' (default): Q_s^v = softmax(s_desc^v / tau_s) over M descriptions, Q~_s^v = Q_s^v A (mass summed
    per class, A (M, K) the 0/1 assignment), L_CA = mean_{i, v != i} H(P_t^i, Q~_s^v).
    target='description' (lss.md's alternative): spread the teacher's class mass evenly over the class's
    descriptions, T_j = P_t[assign_j] / m_assign_j, and L_CA = mean H(T^i, Q_s^v).
    teacher_cat_sims: list of (B, K); student_desc_sims: list of (B, M); assign: (M,) long in [0, K).
    """
    targets = teacher_probs(teacher_cat_sims, center, tau_t)  # list of (B, K)
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


# ----------------------------------------------------------------------------- training (to be written)
# data pipeline, teacher/student loop, checkpointing and the command line follow here.
