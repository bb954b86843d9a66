"""More than one machine, on one: two torchrun agents as two "nodes" on the loopback address (c10d rendezvous, one
process each, gloo on the CPU), started as separate commands exactly as on two machines
(`torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...` on each).

- Both methods train a few steps and every process ends with the same weights, bit for bit (cvrl.py: encoder and
  head; lss.py: student, EMA teacher, the loss's center, text tower). Only the first process writes checkpoint.pt,
  so the others' weights are read through tests/multinode_train.py, which runs the method's own train() and saves
  each process's modules as it ends (its docstring says why that way).
- SIGTERM to both agents mid-training (what a cluster sends to end a job; the agents pass it on to their
  processes) leaves one whole checkpoint of the step where all processes stopped, and no temporary file.

Every wait has a timeout, so a hang fails the test; whatever is still running is killed in a finally.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import torch

import training
from conftest import ROOT

CVRL_TINY = ["--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32", "--batch-size", "4",
             "--head-hidden", "64", "--workers", "0", "--log-every", "1"]
LSS_TINY = ["--init", "random", "--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64",
            "--text-layers", "1", "--size", "32", "--local-size", "16", "--canvas", "32", "32", "--frames", "4",
            "--stride", "2", "--local-frames", "2", "--local-views", "2", "--templates", "single", "--batch-size", "4",
            "--workers", "0", "--log-every", "1", "--epochs", "1", "--no-zero-shot-eval"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_nodes(args, logs):
    """The same torchrun command twice, as two machines would run it: each agent in a session of its own (so a
    signal to one is to that agent alone), its output to a file (a pipe nobody reads could fill and block it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", uuid.uuid4().hex,
           *map(str, args)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True) for log in logs]


def descendants(pid: int) -> list:
    """Every process below `pid` (Linux /proc): the agent's training processes live in sessions of their own."""
    try:
        children = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []
    return children + [d for c in children for d in descendants(c)]


def kill_all(agents):
    for p in agents:
        if p.poll() is None:
            for pid in [p.pid, *descendants(p.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait(timeout=30)


def output(logs) -> str:
    return "\n".join(f"--- node {i}\n{log.read_text()[-3000:]}" for i, log in enumerate(logs))


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


def train_on_two_nodes(tmp_path, method, args):
    out, logs = tmp_path / "run", [tmp_path / "node0.txt", tmp_path / "node1.txt"]
    agents = start_two_nodes([ROOT / "tests" / "multinode_train.py", method, "--out", out, *args], logs)
    try:
        codes = [p.wait(timeout=300) for p in agents]
    finally:
        kill_all(agents)
    assert codes == [0, 0], output(logs)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        sd0, sd1 = ranks[0][name], ranks[1][name]
        assert sd0.keys() == sd1.keys(), name
        different = [k for k in sd0 if not identical(sd0[k], sd1[k])]
        assert not different, f"{method}: rank 1's {name} differs from rank 0's in {different[:5]}"
    return training.load_checkpoint(out / "checkpoint.pt"), ranks[1]


def test_cvrl_two_nodes_end_with_identical_weights(tiny_synthetic, tmp_path):
    ckpt, rank1 = train_on_two_nodes(tmp_path, "cvrl", ["--dataset", "synthetic", "--data", tiny_synthetic,
                                                        *CVRL_TINY, "--epochs", "1"])
    assert ckpt["step"] == 4  # 32 videos / (4 x 2 processes)
    # what rank 0 saved is rank 1's model too: nn.Sequential(encoder, head), keys 0.* and 1.*
    saved = {f"0.{k.removeprefix('encoder.')}": v for k, v in ckpt["backbone"].items()}
    saved |= {f"1.{k}": v for k, v in ckpt["head"].items()}
    assert saved.keys() == rank1["model"].keys()
    assert all(identical(v, rank1["model"][k]) for k, v in saved.items())


def test_lss_two_nodes_end_with_identical_weights(tiny_synthetic, tmp_path):
    ckpt, rank1 = train_on_two_nodes(tmp_path, "lss", ["--dataset", "synthetic", "--data", tiny_synthetic,
                                                       *LSS_TINY, "--max-steps", "2"])
    assert ckpt["step"] == 2
    assert {"student_vit", "teacher", "lss_loss", "text"} <= set(rank1)
    for key, name in (("student", "student_vit"), ("teacher", "teacher"), ("text", "text")):
        assert all(identical(v, rank1[name][k]) for k, v in ckpt[key].items()), key
    assert identical(ckpt["center"], rank1["lss_loss"]["center"])
    assert not identical(ckpt["student"]["proj"], ckpt["teacher"]["proj"])  # it trained: the student moved first


def test_sigterm_to_both_agents_leaves_one_whole_checkpoint(tiny_synthetic, tmp_path):
    # --workers 1: the agents signal each training process's whole process group, which holds its loader's workers
    out, logs = tmp_path / "run", [tmp_path / "node0.txt", tmp_path / "node1.txt"]
    agents = start_two_nodes([ROOT / "cvrl.py", "--dataset", "synthetic", "--data", tiny_synthetic, "--out", out,
                              *CVRL_TINY, "--workers", "1", "--epochs", "50"], logs)
    log = out / "log.jsonl"
    try:
        deadline = time.time() + 180
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert all(p.poll() is None for p in agents), "an agent ended before training started\n" + output(logs)
            assert time.time() < deadline, "training did not start in 180 s\n" + output(logs)
            time.sleep(0.2)
        for p in agents:
            p.send_signal(signal.SIGTERM)
        t0 = time.time()
        for p in agents:
            p.wait(timeout=max(1.0, 60 - (time.time() - t0)))
    finally:
        kill_all(agents)
    text = output(logs)
    assert "terminated (SIGTERM): saving" in text, text
    assert "forcefully" not in text, text  # the processes ended by themselves, not by the agent's SIGKILL 30 s later
    ckpt = training.load_checkpoint(out / "checkpoint.pt")  # whole: it loads
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert ckpt["step"] == steps[-1] >= 2  # the step where both processes stopped: the last one logged
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl"]  # no .tmp file
