"""
training.py -- the plumbing every training run shares, so that each method file shows its own method and its own loop.

Read it top to bottom:
  1. config       a dataclass -> kebab-case flags (help text from each field's comment; a nested settings
                  dataclass, such as data.SyntheticWorld, gives its fields as flags of their own)
  2. processes    the device, torchrun (one process per GPU, gloo on CPU)
  3. checkpoints  atomic writes that survive Ctrl-C, SIGTERM and a full disk; reads that refuse code; resume checks
  4. the loop     plain functions a resumable loop calls: the steps of a run across epochs (resuming mid-epoch,
                  timing the waits for data, the next batch copied to the GPU during the step), unreadable videos
                  reported, averaged log values, Ctrl-C and SIGTERM that save before exiting. No framework and no
                  callbacks: cvrl.py, lss.py and scripts/ call these from loops they write out themselves.
  5. pictures     a grid of images with text (the PNGs of scripts/show.py, scripts/neighbours.py, lss.py zero-shot)
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import inspect
import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

# ----------------------------------------------------------------------------------------------------------------------
# 1. config -> flags
# ----------------------------------------------------------------------------------------------------------------------


def field_helps(config_cls) -> dict:
    """{field: the comment after it} from a config dataclass's source: each field's one-line help, written once."""
    return dict(re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(config_cls), re.M))


def nested(f: dataclasses.Field):
    """The settings dataclass a field holds (declared with default_factory=ThatDataclass), or None."""
    if f.default_factory is dataclasses.MISSING:
        return None
    value = f.default_factory()
    return value if dataclasses.is_dataclass(value) else None


def parse_config(config_cls, argv=None, description="", overrides=()):
    """A kebab-case flag for every field of a config dataclass (--batch-size 64), with the help text taken from the
    field's trailing comment, so the dataclass stays the one place where a setting is defined and explained.

    A field that holds a settings dataclass (field(default_factory=...)) gives one flag per field of that dataclass,
    with the defaults of the instance the factory makes (lss.py's world has a trail, cvrl.py's has none). Fields
    named in `overrides` are read differently: their flags default to None and the field becomes the dict of the
    flags given (eval_linear.py: the checkpoint's world, with what the command line changes)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {}  # field name -> (settings class, its field names)

    def add(name, default, helptext, none=False):
        flag = "--" + name.replace("_", "-")
        if none:
            p.add_argument(flag, type=type(default) if not isinstance(default, tuple) else type(default[0]),
                           nargs=len(default) if isinstance(default, tuple) else None, default=None,
                           help=f"{helptext} (default: the checkpoint's)")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        elif isinstance(default, tuple):
            p.add_argument(flag, type=type(default[0]), nargs=len(default), default=default, help=helptext)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default, help=helptext)

    helps = field_helps(config_cls)
    for f in dataclasses.fields(config_cls):
        inner = nested(f)
        if inner is None:
            add(f.name, f.default, helps.get(f.name, ""))
            continue
        inner_helps = field_helps(type(inner))
        groups[f.name] = (type(inner), [g.name for g in dataclasses.fields(inner)])
        for g in dataclasses.fields(inner):
            add(g.name, getattr(inner, g.name), inner_helps.get(g.name, ""), none=f.name in overrides)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(p.parse_args(argv)).items()}
    for name, (cls, names) in groups.items():
        sub = {n: values.pop(n) for n in names}
        values[name] = {k: v for k, v in sub.items() if v is not None} if name in overrides else cls(**sub)
    return config_cls(**values)


def config_dict(cfg) -> dict:
    """The config as plain containers (nested settings as dicts): what config.json and the checkpoint hold."""
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------------------------------
# 2. processes
# ----------------------------------------------------------------------------------------------------------------------

def resolve_device(flag: str) -> torch.device:
    """--device auto | cpu | cuda -> a torch.device: auto is the GPU when one is visible; cuda without one is an
    error that says so."""
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if flag == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no GPU is visible (torch.cuda.is_available() is False)")
    return torch.device(flag)


def setup_distributed(device_flag: str):
    """-> (rank, world_size, device). torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; plain `python` runs one process with
    no process group. gloo on CPU (tests, laptops), NCCL on GPUs."""
    device_flag = resolve_device(device_flag).type
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_flag)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device_flag == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return rank, world, device


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of one training step's random draws on one process (augmentation, dropout): a function of (seed,
    step, rank) alone, so a resumed run repeats them and every process draws its own."""
    return seed * 1_000_003 + step * 101 + rank


def cosine(step: int, total: int, start: float, end: float) -> float:
    """start -> end along half a cosine over `total` steps (DINO's cosine_scheduler without warmup)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float = 0.0) -> float:
    """The learning rate of both methods: linear from 0 to `peak` over `warmup` steps, then a cosine down to `end`
    at step `total` (SimCLR/CVRL: end 0; DINO/SVT: a small min_lr)."""
    if step < warmup:
        return peak * step / warmup
    return cosine(step - warmup, total - warmup, peak, end)


def unwrap(model):
    """The plain module under DDP / torch.compile wrappers, so state-dict keys carry no 'module.'/'_orig_mod.'."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


# ----------------------------------------------------------------------------------------------------------------------
# 3. checkpoints
# ----------------------------------------------------------------------------------------------------------------------

def save_checkpoint(path, state: dict):
    """Write to a temporary file, fsync, then rename: a crash or SIGKILL mid-write leaves the previous checkpoint.
    The temporary name carries the process id, so two processes writing the same file (two evaluations filling one
    feature cache) never write into each other's. A Ctrl-C or SIGTERM that arrives during the write is held until the
    file is whole and renamed, then delivered: the training loop's own handler then saves and exits as usual,
    instead of torch.save dying half-way with a zip error (signal handlers can only be set from the main thread;
    elsewhere the write is not shielded). A full disk ends the run with one line; the previous file is kept."""
    tmp = f"{path}.tmp{os.getpid()}"
    held: list[int] = []
    shield = threading.current_thread() is threading.main_thread()
    if shield:
        previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _disk_full(e, path):
            raise SystemExit(f"error: no space left on device writing {path}; the previous checkpoint is intact. "
                             f"Free some space (or pass another --out) and run the same command to resume") from e
        raise
    finally:
        if shield:  # None: a handler set outside Python; the default one is the closest we can restore
            for s, h in previous.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL if s == signal.SIGTERM
                              else signal.default_int_handler)
    for signum in held:
        signal.raise_signal(signum)  # now, to the handler the run has (Ctrl-C: KeyboardInterrupt)


def _disk_full(error: BaseException, path) -> bool:
    """Did this write fail for want of space? ENOSPC itself, or torch.save's zip writer failing ("unexpected pos")
    on a disk with (almost) nothing left."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    try:
        return isinstance(error, RuntimeError) and shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2 ** 20
    except OSError:
        return False


def load_checkpoint(path) -> dict:
    """weights_only=True: a checkpoint is tensors and plain containers; a pickle that wants to run code is refused."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure here means "not a checkpoint we can read"
        lines = str(e).splitlines() or [""]
        # torch's weights_only refusal is a long text; the line naming the refused object is the useful one
        why = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0])
        raise SystemExit(f"error: cannot read checkpoint {path}: {type(e).__name__}: {why}\n"
                         f"It is corrupt or not a nanovideossl checkpoint (only tensors and plain containers are "
                         f"accepted: torch.load(weights_only=True)). Move it away to start fresh.")


def state_dict_sha1(sd: dict) -> str:
    """Content identity of a state dict (feature caches, concept caches): names, dtypes, shapes and raw bytes of
    every tensor, in key order."""
    h = hashlib.sha1()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes of any dtype (bf16 has no numpy type)
    return h.hexdigest()


HARMLESS_KEYS = {"workers", "log_every", "device", "out", "compile", "max_steps", "data", "annotations"}


def check_resume_config(saved: dict, cfg, arch_keys):
    """Refuse a resume that would change the network (`arch_keys`); warn about other changed settings."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 -- json/tuple round trip
    changed = {k: (saved.get(k), v) for k, v in config_dict(cfg).items() if k in saved and norm(saved[k]) != norm(v)}
    arch = {k: c for k, c in changed.items() if k in arch_keys}
    if arch:
        raise SystemExit("error: the checkpoint in --out was trained with a different network: " +
                         ", ".join(f"--{k.replace('_', '-')} {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in arch.items()) +
                         ". Use another --out, or the checkpoint's settings.")
    for k, (a, b) in changed.items():
        if k not in HARMLESS_KEYS:
            print(f"warning: resuming with --{k.replace('_', '-')} {b!r} (checkpoint had {a!r})", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------------
# 4. the loop's pieces
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Where a training run is and who it is: its processes, its folder, and its log."""
    rank: int
    world: int
    device: torch.device
    out: Path
    log_file: object = None

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def print(self, *args, **kwargs):
        if self.master:
            tqdm.write(" ".join(str(a) for a in args), **kwargs)

    def log(self, record: dict):
        """One line of OUT/log.jsonl (written by the first process only)."""
        if self.master:
            if self.log_file is None:
                self.log_file = open(self.out / "log.jsonl", "a")
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def start(cfg, method: str) -> tuple[Run, dict | None]:
    """The processes (torchrun or not), the output folder, and the checkpoint to resume from (None: a fresh run).
    A checkpoint in --out that another method wrote is refused by name before anything is loaded from it."""
    rank, world, device = setup_distributed(cfg.device)
    if device.type == "cuda":  # TF32 matmuls and convolutions: fp32 accuracy is not needed, the speed is
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run = Run(rank, world, device, Path(cfg.out))
    if run.master:
        run.out.mkdir(parents=True, exist_ok=True)
    run.barrier()  # the folder exists before any process looks into it
    ckpt = None
    if run.checkpoint_path.exists():
        ckpt = load_checkpoint(run.checkpoint_path)
        if ckpt.get("method") != method:
            raise SystemExit(f"error: {run.checkpoint_path} is a {ckpt.get('method')!r} checkpoint, not a {method}.py "
                             f"one: pass another --out")
    if run.world > 1:  # every process resumes from the checkpoint the first one wrote, or none does
        steps = [None] * run.world
        dist.all_gather_object(steps, None if ckpt is None else ckpt.get("step"))
        if len(set(steps)) > 1:
            raise SystemExit(f"error: the processes see different checkpoints in --out {run.out} (step per process, "
                             f"None for none: {steps}): on several machines --out must be one folder they all share "
                             f"(only the first process writes it, every process resumes from it)")
    return run, ckpt


def write_config(run: Run, config: dict):
    """OUT/config.json and the config on the console (first process only)."""
    if run.master:
        (run.out / "config.json").write_text(json.dumps(config, indent=1))
        print(json.dumps({k: v for k, v in config.items() if k != "clip_arch"}))


SMALL_FOLDER = 256  # a training set this small is checked file by file before the run (a second or two)


def training_videos(cfg, run: Run, batch_note=lambda new, old: "") -> tuple:
    """-> (the run's training videos, cfg, skipped): the split (and --data-fraction of it); for a small folder,
    every file opened first, so that unreadable ones are listed (each once) and dropped before training, and a
    folder with none left says so; and when fewer videos than a batch remain, the batch lowered to what fits, in
    one line that says what that means for the method (`batch_note(new, old)`)."""
    import data
    videos = data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, "train", cfg.synthetic)
    if getattr(cfg, "data_fraction", 1.0) < 1.0:
        videos = videos.subset(cfg.data_fraction, seed=cfg.seed)
    skipped = []
    if len(videos) <= SMALL_FOLDER and cfg.dataset != "synthetic":
        keep = []
        for i, path in enumerate(videos.paths):
            try:
                if data.probe(path).num_frames < 1:
                    raise data.VideoError(path, "has no frames")
                keep.append(i)
            except data.VideoError as e:
                skipped.append(f"{e.path}: {e.reason}")
        if not keep:
            raise data.DatasetError(f"no readable video in {videos.name or cfg.data}: tried " + "; ".join(skipped))
        for m in skipped:
            run.print(f"skipped unreadable video: {m}")
        videos = data.VideoList([videos.paths[i] for i in keep], [videos.labels[i] for i in keep], videos.classes,
                                videos.missing, videos.name, videos.ignored)
    if len(videos) < cfg.batch_size * run.world:
        fits = max(1, len(videos) // run.world)
        run.print(f"note: {len(videos)} training videos cannot fill a batch of {cfg.batch_size} x {run.world} "
                  f"process(es): training with batches of {fits}{batch_note(fits, cfg.batch_size)}")
        cfg = dataclasses.replace(cfg, batch_size=fits)
    return videos, cfg, skipped


def note_data_change(run: Run, ckpt: dict, num_videos: int, steps_per_epoch: int, total_steps: int):
    """A resumed run whose training folder changed: the epochs (and so the schedule) are not what they were."""
    before = ckpt.get("num_videos")
    if before is not None and before != num_videos:
        run.print(f"note: the training videos changed since this run started ({num_videos} now, {before} then): an "
                  f"epoch is now {steps_per_epoch} steps (was {ckpt.get('steps_per_epoch')}), and the run goes on "
                  f"from step {ckpt['step']} to {total_steps}")


class Prefetcher:
    """A loader whose batches arrive on `device`, the next one's copy already under way: `Steps(Prefetcher(loader,
    device), ...)`. On a GPU, while the loop runs step n, batch n+1 is copied from the loader's pinned memory on a
    side CUDA stream, so the copy overlaps step n's kernels instead of queueing behind them on the default stream.
    Every tensor of the batch dict moves ("video", "label", "index"); the rest ("bad", "failed") passes as it is, so
    report_bad works unchanged. On the CPU it is the loader itself, batch for batch: nothing is copied or fetched
    early, and a CPU run is exactly what it was without it.

    Two rules of CUDA streams make this correct. The consumer's stream waits for the side stream before it touches
    the batch (wait_stream: an ordering on the GPU, not a wait on the host). And each tensor, allocated on the side
    stream, is marked as used on the consumer's stream (record_stream), or the caching allocator could hand its memory
    to the next copy while the step still reads it."""

    def __init__(self, loader, device: torch.device):
        self.loader, self.device = loader, device
        self.sampler = loader.sampler  # Steps calls sampler.set_epoch() on it

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.device.type != "cuda":
            yield from self.loader
            return
        side = torch.cuda.Stream(self.device)
        batches = iter(self.loader)
        ahead = self._copy(next(batches, None), side)
        while ahead is not None:
            batch, current = ahead, torch.cuda.current_stream(self.device)
            current.wait_stream(side)  # the copy of `batch` is done before anything after this runs
            for v in batch.values():
                if torch.is_tensor(v):
                    v.record_stream(current)
            ahead = self._copy(next(batches, None), side)  # n+1 starts copying now, while the caller computes n
            yield batch

    def _copy(self, batch, stream):
        if batch is None:
            return None
        with torch.cuda.stream(stream):  # non_blocking from pinned memory: an asynchronous copy on the side stream
            return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Steps:
    """The steps of a run, across epochs: `for step, batch in Steps(...)` yields the 0-based step about to run and
    its batch, from `start` to `total` (or `max_steps`, when not 0). An epoch's order comes from the loader's
    sampler (set_epoch); a run resumed mid-epoch skips the batches that epoch already used, so it sees exactly the
    data an uninterrupted run would. During a step, `epoch_end` says whether it closes an epoch (or the run): the
    moment to checkpoint; `wait` and `busy` add up the seconds spent waiting for data and computing. `step` counts
    the steps done (the body of step s sees s; after it, s + 1). Inside interruptible(), after every step each
    process asks whether it (with several processes: any of them) was sent Ctrl-C or SIGTERM, and all stop there."""

    def __init__(self, loader, start: int, total: int, per_epoch: int, max_steps: int = 0, batch_size: int = 1):
        self.loader, self.step, self.total, self.per_epoch, self.batch_size = loader, start, total, per_epoch, batch_size
        self.stop = min(total, max_steps) if max_steps else total
        self.wait = self.busy = 0.0
        self.epoch_end = False

    def __iter__(self):
        while self.step < self.stop:
            epoch, offset = divmod(self.step, self.per_epoch)
            self.loader.sampler.set_epoch(epoch, skip=offset * self.batch_size)  # mid-epoch resume: the rest of it
            t_ready = time.perf_counter()
            for batch in self.loader:
                t_batch = time.perf_counter()
                self.wait += t_batch - t_ready
                self.epoch_end = (self.step + 1) % self.per_epoch == 0 or self.step + 1 == self.stop
                yield self.step, batch
                self.step += 1
                t_ready = time.perf_counter()
                self.busy += t_ready - t_batch
                _signals.stop_if_any()  # inside interruptible(): a signal noted during the step stops the run here
                if self.epoch_end:
                    break

    def log_due(self, every: int) -> bool:
        """At the end of a step's body: every `every` steps, and at the run's last step (so a short run logs)."""
        return (self.step + 1) % every == 0 or self.step + 1 == self.stop

    def timing(self, clips_per_step: int, steps: int) -> dict:
        """clips per second and the share of time spent waiting for data since the last call; resets them."""
        elapsed = max(self.wait + self.busy, 1e-9)
        out = dict(clips_per_s=clips_per_step * steps / elapsed, data_wait=self.wait / elapsed)
        self.wait = self.busy = 0.0
        return out


def video_of(message: str) -> str:
    """The path of a skipped-video message ("PATH: reason")."""
    return message.split(": ", 1)[0]


def report_bad(batch: dict, skipped: list, run: Run, what: str = "skipped unreadable video") -> None:
    """Unreadable videos of a training batch (the loader replaced each with another video): remembered in `skipped`
    (OUT/skipped.txt at the end) and printed, each video once, whatever its reason this time."""
    seen = {video_of(m) for m in skipped}
    for b in batch["bad"]:
        if video_of(b) not in seen:
            seen.add(video_of(b))
            skipped.append(b)
            if run.master:
                tqdm.write(f"{what}: {b}" + cache_hint(video_of(b)))


def cache_hint(path: str) -> str:
    """A generated video of the cache that turned unreadable: how to make it again."""
    import data
    cache = str(data.cache_dir())
    if not path.startswith(cache + os.sep):
        return ""
    folder = os.path.join(cache, os.path.relpath(path, cache).split(os.sep)[0])
    return f" (a generated video: delete {shlex.quote(folder)} and it is generated again)"


class Mean:
    """Running means of a step's scalars between two log lines. Tensor values stay on their device and are summed
    there (float64), so a step never waits for the GPU: read() brings them to the host, once per log line. It also
    watches one of them (the loss) for a value that is not finite; check_finite() stops the run if there was one
    since the last check, and is called before every log line and every checkpoint, so the checkpoint on disk is
    always one written before it."""

    def __init__(self, start_step: int = 0, watch: str = "loss"):
        self.sums, self.n, self.watch = {}, 0, watch
        self.bad, self.checked = None, start_step  # bad: "a non-finite value was seen" (a device tensor)

    def add(self, values: dict):
        for k, v in values.items():
            v = v.detach().double() if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        if self.watch in values:
            bad = ~torch.isfinite(torch.as_tensor(values[self.watch]))
            self.bad = bad if self.bad is None else self.bad | bad
        self.n += 1

    def read(self) -> dict:
        out = {k: (v.item() if torch.is_tensor(v) else v) / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out

    def check_finite(self, step: int, advice: str):
        """Raise FloatingPointError if the watched value was NaN or infinite at a step since the last check."""
        if self.bad is not None and bool(self.bad):
            when = f"at step {step}" if step == self.checked + 1 else f"at a step between {self.checked + 1} and {step}"
            raise FloatingPointError(f"{self.watch} is not finite {when}; stopping, the last checkpoint (written "
                                     f"before it) is kept. Try {advice}")
        self.bad, self.checked = None, step


@contextlib.contextmanager
def interruptible(run: Run, save):
    """Ctrl-C (SIGINT) and SIGTERM (what SLURM, Kubernetes and torchrun's agent send before they kill) save the
    checkpoint through `save()` and exit 130 / 143: the same command resumes where the run stopped.

    One process stops where the signal finds it (the exception is raised at once), and the signal is also noted: an
    exception raised inside a destructor or a C library's callback is dropped by Python ("Exception ignored"), and
    the note still stops the run after the step. Several processes (torchrun, one machine or many) must not stop
    where the signal finds them: each would stop at its own point, one of them inside a step's all-reduce waiting for
    a peer that has already left to save, until torchrun's SIGKILL 30 s later, and no checkpoint is written. There a
    signal is only noted; after every step all processes ask each other whether any of them was signalled (Steps,
    _Signals.stop_if_any) and stop together after that same step, so `save()` runs on all of them at one step, as it
    does at an epoch's end."""
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set from the main thread
        _signals.watch(run)
        handler = _signals.note if run.world > 1 else _signals.note_and_raise
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
        _signals.stop_if_any()  # a signal noted after the last step's question: stop now, not after what follows
    except (KeyboardInterrupt, _Terminated) as e:
        term = isinstance(e, _Terminated)
        run.print(f"\n{'terminated (SIGTERM)' if term else 'interrupted'}: saving {run.checkpoint_path}; "
                  f"run the same command to resume")
        save()
        raise SystemExit(143 if term else 130)
    finally:
        _signals.watching = False
        for s, h in previous.items():  # None: a handler set outside Python; restore the closest default
            signal.signal(s, h if h is not None else signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)


class _Terminated(BaseException):
    """SIGTERM, turned into an exception. A BaseException, like KeyboardInterrupt: code that catches Exception (a
    video that fails to decode is skipped, data.py) must not swallow it and train on."""


class _Signals:
    """The Ctrl-C / SIGTERM that a training process has been sent and not yet acted on. A signal belongs to a
    process, so there is one of these per process (`_signals`): interruptible() turns it on around the loop, its
    handler notes the signal, and Steps asks stop_if_any() after every step."""

    def __init__(self):
        self.watching, self.signum, self.group, self.world = False, 0, None, 1

    def watch(self, run: Run):
        self.watching, self.signum, self.world = True, 0, run.world
        if run.world > 1 and run.device.type == "cuda" and self.group is None:  # NCCL reduces GPU tensors only: the
            self.group = dist.new_group(backend="gloo")  # question goes through a gloo group of its own, on the CPU

    def note(self, signum, frame):
        self.signum = max(self.signum, signum)

    def note_and_raise(self, signum, frame):  # one process: stop here, now
        self.note(signum, frame)
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def stop_if_any(self):
        """Every process at the same point (after a step): was any of them signalled? One all-reduce of one number
        on the CPU, so it never waits for the GPU. If so, every process raises what the signal means (SIGTERM wins
        over Ctrl-C), and interruptible() saves and exits."""
        if not self.watching:
            return
        signum = self.signum  # 0: none; SIGINT 2; SIGTERM 15
        if self.world > 1:
            signum = torch.tensor([signum])
            dist.all_reduce(signum, op=dist.ReduceOp.MAX, group=self.group)
            signum = int(signum)
        if signum == signal.SIGTERM:
            raise _Terminated()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt()


_signals = _Signals()


def finish(run: Run, skipped: list, steps: int, next_steps: str):
    """The end of a run: OUT/skipped.txt, the closing lines, the process group closed."""
    if run.master:
        if skipped:
            first = {}
            for m in skipped:  # one line per video
                first.setdefault(video_of(m), m)
            (run.out / "skipped.txt").write_text("\n".join(sorted(first.values())) + "\n")
            run.print(f"{len(first)} unreadable videos were skipped (listed in {run.out / 'skipped.txt'})")
        run.print(f"done: {steps} steps; checkpoint {run.checkpoint_path}\n{next_steps}")
        if run.log_file is not None:
            run.log_file.close()
    if run.world > 1:
        dist.destroy_process_group()


def command(main):
    """Run a script's main(): a user mistake (SystemExit("error: ..."), a data.DatasetError) ends in its one line and
    exit status 2, a NaN loss in its one line and status 1: never a traceback for either."""
    import data
    try:
        return main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except data.DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def quote(path) -> str:
    """A path as it must be typed in a shell command (spaces, quotes, any characters)."""
    return shlex.quote(str(path))


# ----------------------------------------------------------------------------------------------------------------------
# 5. pictures
# ----------------------------------------------------------------------------------------------------------------------

def image_grid(rows, pad: int = 4, background=(255, 255, 255)):
    """rows: [(text, [uint8 (H, W, 3) images], [captions] or None)] -> a PIL image: for each row a line of text, then
    its images side by side (top-aligned), each with its caption under it (lines split at '\\n', each cut to the
    image's width). A row may have text only (a header)."""
    from PIL import Image, ImageDraw
    font = picture_font()
    rows = [(legible(text, font), images, [legible(c, font) for c in captions] if captions else None)
            for text, images, captions in rows]
    line = font.getbbox("Ag")[3] + 3  # text line height in pixels
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fit(text, width):  # cut a caption line to the image's width, marking the cut
        while len(text) > 1 and measure.textlength(text, font=font) > width:
            text = text[:-2] + "~"
        return text

    def caption_lines(captions):
        return max(c.count("\n") + 1 for c in captions) if captions else 0

    width, height = 0, pad
    for text, images, captions in rows:
        row_w = pad + sum(im.shape[1] + pad for im in images)
        width = max(width, row_w, 2 * pad + int(measure.textlength(text, font=font)))
        height += line + (max(im.shape[0] for im in images) + pad if images else 0) + line * caption_lines(captions)
    canvas = Image.new("RGB", (width, height + pad), background)
    draw = ImageDraw.Draw(canvas)
    y = pad
    for text, images, captions in rows:
        draw.text((pad, y), text, fill=(0, 0, 0), font=font)
        y += line
        x = pad
        for k, im in enumerate(images):
            canvas.paste(Image.fromarray(np.ascontiguousarray(im)), (x, y))
            for j, cap in enumerate(captions[k].split("\n") if captions else []):
                draw.text((x, y + im.shape[0] + 1 + j * line), fit(cap, im.shape[1]), fill=(0, 0, 0), font=font)
            x += im.shape[1] + pad
        if images:
            y += max(im.shape[0] for im in images) + pad + line * caption_lines(captions)
    return canvas


# Fonts that cover most scripts (Latin, Greek, Cyrillic; Noto and Unifont also CJK), where a system has them; else
# Pillow's own font, and names it cannot draw are spelt in ASCII (legible() below) rather than drawn as boxes.
FONTS = ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
         "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/unifont/unifont.ttf",
         "/System/Library/Fonts/Supplemental/Arial Unicode.ttf", "C:/Windows/Fonts/arial.ttf"]


def picture_font(size: int = 11):
    from PIL import ImageFont
    for name in FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def legible(text: str, font) -> str:
    """`text` if the font draws every character of it, else the same in ASCII: accents dropped (é -> e) and any
    other character as its code (日 -> \\u65e5), so a name is never a row of boxes."""
    try:
        missing = [ch for ch in set(text) if not ch.isspace() and ch.isprintable() and not _has_glyph(font, ch)]
    except Exception:  # noqa: BLE001 -- a font that cannot be asked: play safe
        missing = [ch for ch in text if ord(ch) > 127]
    if not missing:
        return text
    import unicodedata
    plain = unicodedata.normalize("NFKD", text)
    return "".join(ch if ord(ch) < 128 else "" if unicodedata.combining(ch) else f"\\u{ord(ch):04x}" for ch in plain)


def _has_glyph(font, ch: str) -> bool:
    """Does the font have a glyph of its own for ch, not the 'missing' box it draws for U+FFFF?"""
    mask, missing = font.getmask(ch), font.getmask("\uffff")
    return ch.isascii() or mask.size != missing.size or bytes(mask) != bytes(missing)
