"""Run by tests/test_multinode.py under torchrun: `multinode_train.py cvrl|lss FLAGS...` runs that method's own
train(cfg), unchanged, and at its end writes every process's weights to OUT/rank<r>.pt, so that the test can compare
the processes bit for bit.

Why this way: only the first process writes checkpoint.pt, and train() returns nothing. Making the other processes
believe they are the first would change what the run does (its printing, its log, its caches), and a switch read by
the method files would put test code into them. So training.finish is wrapped instead: every process calls it once,
at the end of train(), from train()'s own frame. Before it closes the process group, every nn.Module among train()'s
local variables is saved as its state dict, the DDP and compile wrappers removed: for cvrl.py the encoder and its
head (`model`), for lss.py the student, the EMA teacher, the loss with its center and the text tower.
"""
import inspect
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import training  # noqa: E402

method, argv = sys.argv[1], sys.argv[2:]
real_finish = training.finish


def finish_saving_every_rank(run, *args, **kwargs):
    trains_locals = inspect.currentframe().f_back.f_locals  # the variables of cvrl.train / lss.train, as they end
    modules = {name: training.unwrap(v).state_dict() for name, v in trains_locals.items()
               if isinstance(v, torch.nn.Module)}
    torch.save(modules, run.out / f"rank{run.rank}.pt")
    return real_finish(run, *args, **kwargs)


training.finish = finish_saving_every_rank
if method == "cvrl":
    import cvrl
    training.command(lambda: cvrl.train(cvrl.parse_args(argv)))
else:
    import lss
    training.command(lambda: lss.main(argv))
