"""
Pretrain a tiny CLIP on captioned synthetic stills: the image-text start that lss.py adapts when no OpenAI weights
are at hand (its default, `--init tiny`).

LSS is an adaptation method: it starts from an image CLIP that already names actions from single frames, because web
captions ("a man juggling") sit under photos whose pose and objects show the action, and it teaches that model to
use time. This script makes such a start offline, in minutes on a CPU. The "web" is make_stills below: single images
of one shape with a faint trail of its recent motion, captioned from what is drawn ("a small red triangle rising
near the top left"). The model is lss.py's own CLIP (so the result is an OpenAI-layout state dict that
`lss.load_clip` reads), both towers from random weights, trained as CLIP was: symmetric InfoNCE over the batch's
image-text pairs with a learned temperature.

    python scripts/pretrain_clip.py                      # ~7 min on 2 CPU cores; writes into the cache (see --out)
    python scripts/pretrain_clip.py --steps 300 --out /tmp/clip.pt
    python lss.py --init clip --clip /tmp/clip.pt        # LSS from it (lss.py's default does this by itself)
    python scripts/pretrain_clip.py --picture docs/stills.png   # what the stills and captions look like

It reports, on held-out stills: image->text and text->image retrieval (recall@1 among the held-out set) and
zero-shot accuracy per attribute (motion, shape, colour, size, position) against chance; and writes them beside the
weights (FILE.json).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import lss  # noqa: E402
import training  # noqa: E402


# ----------------------------------------------------------------------------- the captioned stills
# LSS adapts an image CLIP, which learned from web photos and their captions to name what a single frame shows. Our
# stand-in for the web: single images drawn by the same renderer -- one shape of a random kind, colour, size and
# position, with the full motion trail of its recent path -- each with a caption generated from what is drawn ("a
# small red triangle rising near the top left"). Like CLIP's web images, they are not frames of the video dataset
# and never see its labels; the caption's motion words are what lets the text tower name the video classes later.

STILL_COLOURS = {"white": (1.0, 1.0, 1.0), "red": (1.0, 0.15, 0.15), "green": (0.2, 0.85, 0.2),
                 "blue": (0.25, 0.4, 1.0), "yellow": (1.0, 0.9, 0.1), "cyan": (0.1, 0.9, 0.9),
                 "magenta": (0.95, 0.2, 0.95), "orange": (1.0, 0.55, 0.1)}
POSITIONS = [["top left", "top", "top right"], ["left", "centre", "right"], ["bottom left", "bottom", "bottom right"]]
# Every caption says the motion, most also some of the shape's kind, size, colour and position, in a random template
# and a random phrasing of the motion. (Captions that named only the motion and one other attribute taught the tiny
# CLIP less motion: 34% zero-shot on held-out stills against 47%; docs/results.md.)
CAPTION_TEMPLATES = ["a {size} {colour} {shape} {motion} {where}", "a {colour} {shape} {motion}",
                     "{where}, a {size} {shape} {motion}", "a photo of a {shape} {motion}",
                     "a {size} {shape} {motion}, {colour}, {where}"]


def shape_word(sides: int, aspect: float) -> str:
    base = {3: "triangle", 4: "square", 5: "pentagon"}[sides]
    if aspect > 1:
        return "bar" if sides == 4 else "long " + base
    return base


def still_attributes(p: dict, i: int, S: int) -> dict:
    """What frame i of the motion `p` shows, in caption words: motion (class), shape, size, position."""
    col = min(2, int(3 * p["cx"][i] / S))
    row = min(2, int(3 * p["cy"][i] / S))
    return dict(motion=data.SYNTHETIC_CLASSES[p["label"]], shape=shape_word(p["sides"], p["aspect"]),
                size="small" if p["radius"][i] < 0.13 * S else "large", position=POSITIONS[row][col])


def caption(attrs: dict, rng: np.random.Generator) -> str:
    """A caption of a still from its attributes: a random template and a random phrasing of its motion."""
    where = "in the centre" if attrs["position"] == "centre" else f"near the {attrs['position']}"
    phrases = lss.MOTION_PHRASES[attrs["motion"]]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    text = template.format(size=attrs["size"], colour=attrs["colour"], shape=attrs["shape"], where=where,
                           motion=phrases[int(rng.integers(len(phrases)))])
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an orange square"


# The stills' own look, a little varied as web photos are: a faint textured background up to STILL_CLUTTER and
# sensor noise up to STILL_NOISE (data.py's _camera). Videos may be filmed in far more clutter and noise (--clutter,
# --noise): the gap between the two is what adapting the image CLIP to video has to bridge.
STILL_CLUTTER, STILL_NOISE = 0.3, 0.03
STILL_TRAIL = 1.0  # the trail's strength in the stills
STILL_CONTEXT = (0.2, 0.5)  # the scene's tint in the stills: photos of an action show its usual scene


def render_still(rng: np.random.Generator, size=32, frames=16, label=None, colour=None,
                 shape=None) -> tuple[np.ndarray, dict]:
    """One captioned still -> (uint8 (size, size, 3), attributes): one frame of a class's motion over `frames`
    frames, any frame of it, drawn with the whole trail of its recent past (the motion starts one trail span before
    the frames, as a video's does) in a named colour. A frame drawn anywhere in the motion reads the same way early
    or late in a video: what carries the motion is the trail, not where the motion has led. The class, the colour
    name and the shape (sides, aspect) are random unless given."""
    step = data._trail_step(frames)
    pre = data.TRAIL_GHOSTS * step
    label = int(rng.integers(len(data.SYNTHETIC_CLASSES))) if label is None else label
    p = data.synthetic_motion(label, rng, size, frames + pre)
    if shape is not None:
        p["sides"], p["aspect"] = shape
    i = pre + int(rng.integers(frames))
    name = list(STILL_COLOURS)[int(rng.integers(len(STILL_COLOURS)))] if colour is None else colour
    mk = data._trail_mask(p, i, size, STILL_TRAIL, step)[..., None]
    scene = data._context(label, rng, size, rng.uniform(*STILL_CONTEXT)) if STILL_CONTEXT[1] > 0 else 0.0
    img = scene * (1 - mk) + mk * np.array(STILL_COLOURS[name], np.float32)
    img = data._camera(img[None], rng, STILL_CLUTTER, STILL_NOISE)[0]
    return (img.clip(0, 1) * 255 + 0.5).astype(np.uint8), {**still_attributes(p, i, size), "colour": name}


STILL_GROUP = len(data.SYNTHETIC_CLASSES)


def _stills_chunk(job):
    seed, start, n, size = job
    images, attrs, captions = [], [], []
    for k in range(start, start + n):
        # one generator per still (the corpus does not depend on chunking) and one per group of STILL_GROUP stills:
        # a group shares its colour and shape and shows every motion once, in a random order (see make_stills)
        grng = np.random.default_rng([seed, k // STILL_GROUP, 1])
        order = grng.permutation(len(data.SYNTHETIC_CLASSES))
        colour = list(STILL_COLOURS)[int(grng.integers(len(STILL_COLOURS)))]
        shape = (int(grng.choice([3, 4, 5, 4])), float(grng.choice([1.0, 1.0, 1.6])))
        rng = np.random.default_rng([seed, k])
        img, a = render_still(rng, size, label=int(order[k % STILL_GROUP]), colour=colour, shape=shape)
        images.append(img)
        attrs.append(a)
        captions.append(caption(a, rng))
    return np.stack(images), attrs, captions


def make_stills(n: int, size=32, seed=0, workers=None, progress=True) -> tuple[np.ndarray, list, list]:
    """n captioned stills -> (uint8 (n, size, size, 3), [attributes], [captions]). Deterministic in `seed`."""
    chunk = 500
    jobs = [(seed, s, min(chunk, n - s), size) for s in range(0, n, chunk)]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    images, attrs, captions = [], [], []
    with mp.get_context("fork").Pool(workers) as pool:
        for im, a, c in tqdm(pool.imap(_stills_chunk, jobs), total=len(jobs), desc="captioned stills",
                             unit="chunk", disable=not progress):
            images.append(im)
            attrs += a
            captions += c
    return np.concatenate(images), attrs, captions


# ----------------------------------------------------------------------------- pretraining

@dataclass
class Config:
    # corpus
    stills: int = 20000             # training stills (captioned images), made once per run in seconds
    heldout: int = 1000             # held-out stills for the retrieval and zero-shot report
    size: int = 32                  # still side = CLIP input resolution, pixels
    # model: lss.CLIP, both towers from random weights
    embed_dim: int = 64             # joint image-text space (ViT-B/16: 512)
    width: int = 128                # ViT width; heads = width // 64, as OpenAI (ViT-B: 768)
    layers: int = 4                 # ViT blocks (ViT-B: 12)
    patch: int = 8                  # patch side, pixels (ViT-B/16: 16)
    text_width: int = 128           # text transformer width (ViT-B/16: 512)
    text_layers: int = 4            # text transformer blocks (ViT-B/16: 12)
    context: int = 16               # text context length in tokens (OpenAI: 77; our captions are short)
    # optimisation (CLIP: AdamW, cosine schedule, learned temperature clamped at 100)
    steps: int = 1200               # training steps
    batch_size: int = 128           # image-text pairs per step: the negatives of InfoNCE
    lr: float = 1e-3                # AdamW peak learning rate
    warmup: int = 100               # linear warm-up steps
    weight_decay: float = 0.1       # on matrices only (CLIP: 0.2)
    seed: int = 0
    # output
    out: str | None = None          # weights file; default: the cache, named by these settings (reused if present)
    threads: int = 0                # torch threads (0: torch's default)
    picture: str | None = None      # only write a PNG of a few stills with their captions here (README's docs/stills.png)
    path_only: bool = False         # make sure the weights exist (pretraining them if not), then print only their path


MODEL_KEYS = ("stills", "size", "embed_dim", "width", "layers", "patch", "text_width", "text_layers", "context",
              "steps", "batch_size", "lr", "warmup", "weight_decay", "seed")


def default_path(cfg: Config) -> Path:
    """Cache file named by every setting that changes the weights (and the stills' version)."""
    key = json.dumps({"v": 8, **{k: getattr(cfg, k) for k in MODEL_KEYS}}, sort_keys=True)
    return data.cache_dir() / f"tiny-clip-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"


def build_clip(cfg: Config) -> lss.CLIP:
    return lss.CLIP(lss.CLIPConfig(embed_dim=cfg.embed_dim, image_resolution=cfg.size, vision_layers=cfg.layers,
                                   vision_width=cfg.width, vision_patch_size=cfg.patch,
                                   vision_heads=max(1, cfg.width // 64), context_length=cfg.context,
                                   text_width=cfg.text_width, text_heads=max(1, cfg.text_width // 64),
                                   text_layers=cfg.text_layers))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> CLIP-normalised float (N, 3, S, S), the normalisation lss.py's video models use."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(lss.CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(lss.CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_loss(model: lss.CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE: pair i's image and text are positives, the batch's other pairs negatives.
      L = (CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2,  I, T unit rows, s = exp(logit_scale)."""
    logits_i, logits_t = model(images, tokens)  # (B, B) each
    target = torch.arange(images.shape[0])
    loss = (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target)) / 2
    acc = (logits_i.argmax(-1) == target).float().mean()
    return loss, acc


# zero-shot prompts per attribute: the caption words for each value, in a caption-like sentence
def attribute_prompts() -> dict:
    where = lambda p: "in the centre" if p == "centre" else f"near the {p}"  # noqa: E731
    return {
        "motion": {c: [t.format(lss.SYNTHETIC_CLASS_TEXT[c]) for t in lss.SYNTHETIC_TEMPLATES]
                   for c in data.SYNTHETIC_CLASSES},  # the prompts lss.py's synthetic zero-shot ensembles
        "shape": {s: f"a photo of a {s}" for s in ("triangle", "square", "bar", "pentagon")},
        "colour": {c: f"a {c} shape" for c in STILL_COLOURS},
        "size": {s: f"a {s} shape" for s in ("small", "large")},
        "position": {p: f"a shape {where(p)}" for row in POSITIONS for p in row},
    }


def attribute_value(attrs: dict, name: str) -> str:
    v = attrs[name]
    return v.split()[-1] if name == "shape" else v  # "long triangle" counts as a triangle


@torch.no_grad()
def evaluate(model: lss.CLIP, images: torch.Tensor, tokens: torch.Tensor, attrs: list) -> dict:
    model.eval()
    img = torch.cat([F.normalize(model.encode_image(images[i:i + 500]), dim=-1) for i in range(0, len(images), 500)])
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    sim = img @ txt.T  # (N, N): held-out image i vs caption j
    target = torch.arange(len(img))
    res = {"n": len(img), "image_to_text_r1": (sim.argmax(1) == target).float().mean().item() * 100,
           "text_to_image_r1": (sim.argmax(0) == target).float().mean().item() * 100,
           "retrieval_chance": 100 / len(img), "zero_shot": {}}
    for name, prompts in attribute_prompts().items():
        values = list(prompts)
        T = torch.stack([F.normalize(F.normalize(model.encode_text(lss.tokenize(
            [p] if isinstance(p, str) else p, model.cfg.context_length)), dim=-1).mean(0), dim=0)
            for p in prompts.values()])  # a prompt ensemble per value: mean of unit vectors, re-normalised
        pred = (img @ T.T).argmax(1)
        truth = torch.tensor([values.index(attribute_value(a, name)) for a in attrs])
        res["zero_shot"][name] = dict(top1=(pred == truth).float().mean().item() * 100, chance=100 / len(values))
    model.train()
    return res


def pretrain(cfg: Config, log=print) -> dict:
    """Train and return {"state_dict", "metrics"}."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, attrs, captions = make_stills(cfg.stills + cfg.heldout, cfg.size, cfg.seed)
    x = to_input(images)                                     # (N, 3, S, S)
    tokens = lss.tokenize(captions, cfg.context)             # (N, context)
    x_train, t_train = x[:cfg.stills], tokens[:cfg.stills]
    x_held, t_held, a_held = x[cfg.stills:], tokens[cfg.stills:], attrs[cfg.stills:]
    log(f"{cfg.stills} + {cfg.heldout} captioned stills ({cfg.size} px) in {time.perf_counter() - t0:.0f} s, e.g. "
        f"{captions[0]!r}")
    model = build_clip(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=cfg.weight_decay), dict(params=other, weight_decay=0.0)],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)  # CLIP's betas and eps
    log(f"tiny CLIP: {n_params / 1e6:.1f}M params (of which {model.token_embedding.weight.numel() / 1e6:.1f}M the "
        f"token table) | {cfg.steps} steps x {cfg.batch_size} pairs | lr {cfg.lr:g}")
    before = evaluate(model, x_held, t_held, a_held)
    g = torch.Generator().manual_seed(cfg.seed)
    # batches of whole groups: the stills of a group share colour and shape and differ in their motion (data.py),
    # so telling a group's captions apart takes reading the motion; without them, colour, position and size tell
    # almost every pair of a batch apart and the motion is barely learnt
    G = STILL_GROUP

    def shuffled():
        return (torch.randperm(cfg.stills // G, generator=g)[:, None] * G + torch.arange(G)).flatten()

    order, pos = shuffled(), 0
    history = []
    bar = tqdm(range(cfg.steps), desc="pretrain CLIP", unit="step")
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        if pos + cfg.batch_size > len(order):  # a new epoch: a new order
            order, pos = shuffled(), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        loss, acc = clip_loss(model, x_train[idx], t_train[idx])
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; try a lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP clamps the inverse temperature at 100
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append(dict(step=step, loss=loss.item(), batch_acc=acc.item(), lr=lr,
                                temperature=1 / model.logit_scale.exp().item()))
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.2f}",
                            T=f"{1 / model.logit_scale.exp().item():.3f}")
    after = evaluate(model, x_held, t_held, a_held)
    metrics = dict(config=asdict(cfg), seconds=time.perf_counter() - t0, params=n_params, before=before,
                   after=after, history=history, versions=dict(torch=torch.__version__))
    return {"state_dict": model.state_dict(), "metrics": metrics}


def report(m: dict, log=print):
    a, b = m["after"], m["before"]
    log(f"held-out ({a['n']} stills): image->text R@1 {a['image_to_text_r1']:.1f}%, text->image R@1 "
        f"{a['text_to_image_r1']:.1f}% (chance {a['retrieval_chance']:.1f}%; untrained {b['image_to_text_r1']:.1f}, "
        f"{b['text_to_image_r1']:.1f})")
    for name, r in a["zero_shot"].items():
        log(f"  zero-shot {name:<9} {r['top1']:5.1f}%  (chance {r['chance']:.1f}%, untrained "
            f"{b['zero_shot'][name]['top1']:.1f}%)")


def usable(path: Path, log=print) -> bool:
    """Is there a readable tiny CLIP at `path`? A cached file that cannot be read (a copy cut short, a full disk) is
    said so and moved aside, so that it is made again."""
    if not path.exists():
        return False
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if "visual.conv1.weight" in sd:
            return True
        why = "no CLIP weights in it"
    except Exception as e:  # noqa: BLE001 -- whatever is wrong with it, it is rebuilt
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    log(f"the cached tiny CLIP {path} is unreadable ({why}): pretraining it again")
    path.replace(path.with_suffix(".broken"))
    return False


def ensure(cfg: Config | None = None, log=print) -> str:
    """The tiny CLIP's weights file: pretrained once with `cfg`'s settings, then reused from the cache. One process
    pretrains; any other started meanwhile (a parallel study job, a second lss.py) says whom it waits for, and waits
    for the file."""
    import fcntl
    cfg = cfg or Config()
    path = Path(cfg.out) if cfg.out else default_path(cfg)
    if usable(path, log):
        return str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot write the tiny CLIP into {path.parent} ({e.strerror or e}): point "
                         f"NANOVIDEOSSL_CACHE (or --out) at a writable folder")
    with open(path.with_suffix(".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            log(f"waiting for {holder}, which is pretraining the tiny CLIP into {path} (minutes; this process goes on "
                f"when the file is there)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if usable(path, log):
            return str(path)
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()} (started {time.strftime('%H:%M:%S')})")
        lock.flush()
        log(f"pretraining the tiny CLIP once (cached as {path}) ...")
        res = pretrain(cfg, log)
        path.with_suffix(".json").write_text(json.dumps(res["metrics"], indent=1))
        training.save_checkpoint(path, res["state_dict"])  # atomic; an OpenAI-layout state dict, as load_clip expects
    report(res["metrics"], log)
    log(f"wrote {path} and {path.with_suffix('.json')}")
    return str(path)


def stills_picture(path: str, n: int = 8, seed: int = 0, scale: int = 4):
    """A PNG of the first n training stills (this --seed's corpus), each with its caption underneath."""
    from PIL import Image, ImageDraw
    images, _, captions = make_stills(n, seed=seed, workers=1, progress=False)
    S, cols, pad, text_h = images.shape[1] * scale, 4, 6, 28
    rows = -(-n // cols)
    cell_w = max(S, 150)
    canvas = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (S + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, cap) in enumerate(zip(images, captions)):
        x, y = pad + (k % cols) * (cell_w + pad), pad + (k // cols) * (S + text_h + pad)
        canvas.paste(Image.fromarray(img).resize((S, S), Image.NEAREST), (x + (cell_w - S) // 2, y))
        words, lines = cap.split(), [""]
        for w in words:  # wrap to the cell width
            if draw.textlength(lines[-1] + " " + w) > cell_w and lines[-1]:
                lines.append(w)
            else:
                lines[-1] = (lines[-1] + " " + w).strip()
        draw.multiline_text((x, y + S + 2), "\n".join(lines[:2]), fill="black", spacing=1)
    canvas.save(path, optimize=True)
    return path


def main(argv=None):
    cfg = training.parse_config(Config, argv, __doc__.strip().split("\n\n")[0])
    if cfg.picture:
        print(f"wrote {stills_picture(cfg.picture, seed=cfg.seed)}")
        return 0
    if cfg.path_only:  # lss.py's way in (it imports nothing from scripts/): the log on stderr, the path on stdout
        print(ensure(cfg, log=lambda *a: print(*a, file=sys.stderr, flush=True)))
        return 0
    path = Path(cfg.out) if cfg.out else default_path(cfg)
    if usable(path):
        print(f"{path} exists (same settings); delete it to pretrain again")
        meta = path.with_suffix(".json")
        if meta.exists():
            report(json.loads(meta.read_text()))
        return 0
    ensure(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(training.command(main))
