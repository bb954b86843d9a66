"""Run by tests/test_cvrl_train.py under `torchrun --nproc_per_node=2` on CPU (gloo).

Checks the whole CVRL step under DDP -- SyncBatchNorm in encoder and head, the differentiable all-gather of
negatives, rank-offset labels, DDP gradient averaging -- against one process on the concatenated batch: the loss
(averaged over ranks) and every parameter gradient must be equal. This is the test that catches the classic
all-gather gradient bug (a gather whose backward drops the other ranks' terms) and a missing SyncBN.
"""
import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cvrl  # noqa: E402

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
B = 4  # videos per rank
encoder = cvrl.build_encoder("tiny").double()
model = nn.Sequential(encoder, cvrl.ProjectionHead(encoder.feature_dim, 32, 16, 2)).double()
reference = copy.deepcopy(model)  # plain BatchNorm, one process
x1 = torch.rand(B * world, 3, 4, 24, 24, dtype=torch.float64)  # view 1 of every video of the global batch
x2 = torch.rand(B * world, 3, 4, 24, 24, dtype=torch.float64)

# one process, concatenated batch: [view 1 of all videos; view 2 of all videos]. Computed before the process group
# exists, so nt_xent sees a single process.
z = reference(torch.cat([x1, x2]))
ref_loss = cvrl.nt_xent(z[: B * world], z[B * world:], 0.1)
ref_loss.backward()

dist.init_process_group("gloo")

# DDP: each rank takes its B videos
ddp = nn.parallel.DistributedDataParallel(cvrl.sync_batchnorm(model, torch.device("cpu")))
mine = slice(rank * B, (rank + 1) * B)
z = ddp(torch.cat([x1[mine], x2[mine]]))
loss = cvrl.nt_xent(z[:B], z[B:], 0.1)
loss.backward()
avg = loss.detach().clone()
dist.all_reduce(avg, op=dist.ReduceOp.AVG)

ok = torch.allclose(avg, ref_loss.detach(), rtol=1e-9, atol=1e-9)
worst = 0.0
for (name, p), q in zip(ddp.module.named_parameters(), reference.parameters()):
    err = (p.grad - q.grad).abs().max().item() / (q.grad.abs().max().item() + 1e-12)
    worst = max(worst, err)
    if not torch.allclose(p.grad, q.grad, rtol=1e-7, atol=1e-10):
        ok = False
        print(f"rank {rank}: gradient of {name} differs (relative error {err:.2e})", flush=True)
print(f"rank {rank}: loss {avg.item():.12f} vs single process {ref_loss.item():.12f}; worst relative gradient "
      f"error {worst:.2e}; {'OK' if ok else 'MISMATCH'}", flush=True)
dist.destroy_process_group()
sys.exit(0 if ok else 1)
