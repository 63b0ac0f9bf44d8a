"""Quantization Networks at a short budget (issue 12): ResNet-20 from the zoo's float model,
a 10k-image CIFAR-10 training subset (seeded), the first 2k test images, one thread, fp32,
the procedure of :func:`lowbit.train.qnet.fit_qnet` with any of its options; prints one JSON
line (soft / hard / hard-after-BN-re-estimation accuracy, per-phase accuracy, the lowest
activation beta seen in training and the first activation betas at the end).

The numbers quoted in lowbit.train.qnet's docstrings (act_beta_floor, act_init) and in the
issue 12 notes came from this script (about 6-9 min each for 2/2, 3 phases of 1 epoch):

    python benchmarks/qnet_short_budget.py --w 1                       # 1/32, defaults
    python benchmarks/qnet_short_budget.py --w 2 --a 2 --extra '{"act_beta_floor": 0.5}'
    python benchmarks/qnet_short_budget.py --w 2 --a 2 --extra '{"act_init": "linear"}'
    python benchmarks/qnet_short_budget.py --w 1 --mode factor50       # the zoo's former T -> 50

Issue 12 item 3 (the activation defaults act_alpha="fit", act_grad_temperature=1; JSON null
gives the paper's backward at T):

    python benchmarks/qnet_short_budget.py --w 2 --a 2                 # defaults
    python benchmarks/qnet_short_budget.py --w 2 --a 2 --extra '{"act_grad_temperature": null}'
    python benchmarks/qnet_short_budget.py --w 2 --a 2 --extra '{"act_alpha": "reciprocal"}'
    python benchmarks/qnet_short_budget.py --w 2 --a 2 \
        --extra '{"act_grad_temperature": null, "initial_temperature": 5}'
    python benchmarks/qnet_short_budget.py --w 4 --a 4 --extra '{"act_init": "linear"}'
    python benchmarks/qnet_short_budget.py --w 3 --a 3 --extra '{"act_init": "kmeans"}'
    python benchmarks/qnet_short_budget.py --w 3 --a 3 --extra '{"act_init": "linear"}'
    python benchmarks/qnet_short_budget.py --w 32 --a 2 --init-check   # hard net before a step
    python benchmarks/qnet_short_budget.py --w 32 --a 2 --n 5000 --phases activations \
        --extra '{"act_alpha": "reciprocal"}'                          # phase 2 alone

``--w 32`` keeps the weights float; ``--phases activations`` runs phase 2 alone (activation
quantizers calibrated and trained, everything else too); ``--init-check`` trains nothing: the
hard network's accuracy right after calibration, with training's and re-estimated BatchNorm
statistics, for each act_alpha.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

FLOAT = Path(__file__).resolve().parent / "results" / "zoo_table2" / "float_aug" / "model.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--w", type=int, default=1, help="weight bits")
    p.add_argument("--a", type=int, default=32, help="activation bits (32: float)")
    p.add_argument("--n", type=int, default=10000, help="training images (seeded subset)")
    p.add_argument("--ntest", type=int, default=2000, help="first test images")
    p.add_argument("--mode", choices=("default", "factor50"), default="default",
                   help="default: fit_qnet's defaults; factor50: T = epoch x 50 per step")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=1, help="epochs per phase")
    p.add_argument("--clip", type=float, default=0.0, help="gradient clip (0: qnet's 5)")
    p.add_argument("--extra", default="{}", help="fit_qnet keyword arguments, as JSON")
    p.add_argument("--phases", choices=("all", "activations"), default="all",
                   help="all: the paper's three phases; activations: phase 2 alone")
    p.add_argument("--init-check", action="store_true", help="train nothing: the hard "
                   "network after calibration, per act_alpha")
    p.add_argument("--data-dir")
    a = p.parse_args()
    torch.set_num_threads(1)
    import lowbit
    from lowbit.data import load_dataset
    from lowbit.experiment import default_config, load_model
    from lowbit.quantizers.soft import SoftAct
    from lowbit.train import qnet

    tr, te = load_dataset("cifar10", "train", a.data_dir), load_dataset("cifar10", "test",
                                                                        a.data_dir)
    i = torch.randperm(len(tr.labels), generator=torch.Generator().manual_seed(123))[:a.n]
    train, test = (tr.images[i], tr.labels[i]), (te.images[:a.ntest], te.labels[:a.ntest])
    net = load_model(FLOAT)[0].train()
    q = lowbit.quantize(net, lowbit.Recipe("qnet", a.w, "qnet", a.a, keep_first=True,
                                           keep_last=True, keep_bits=32))
    cfg = qnet.qnet_config(replace(default_config("resnet20", "cifar10", epochs=a.epochs,
                                                  lr=a.lr, num_threads=1),
                                   grad_clip=a.clip or None))
    betas: list[float] = []

    def spy(mod, _inp):
        if mod.training and not mod.hard:
            betas.append(float(mod.beta.detach()))

    acts = [m for m in q.modules() if isinstance(m, SoftAct)]
    for m in acts:
        m.register_forward_pre_hook(spy)
    if a.init_check:
        print(json.dumps({"args": vars(a), **init_check(q, train, test, cfg.batch_size)}))
        return
    phases = qnet.PAPER_PHASES if a.phases == "all" else (qnet.PAPER_PHASES[1],)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        if a.mode == "factor50":
            r = qnet.fit_qnet(q, train, test, cfg, d, 50.0, progress=False, per_step=True,
                              phases=phases, **json.loads(a.extra))
        else:
            r = qnet.fit_qnet(q, train, test, cfg, d, progress=False, phases=phases,
                              **json.loads(a.extra))
    out = {k: v for k, v in r.items() if k != "phases"}
    out["phase_acc"] = [s["test_accuracy"] for s in r["phases"]]
    out["seconds"] = round(time.time() - t0)
    if betas:
        out["beta_min_seen"] = min(betas)
        out["act_betas_end"] = [round(float(m.beta.detach()), 4) for m in acts][:6]
    print(json.dumps({"args": vars(a), **out}))


def init_check(q, train, test, batch_size: int) -> dict:
    """Hard accuracy right after calibration (no training), training's BatchNorm statistics
    and re-estimated ones, for act_alpha "reciprocal" (the paper's) and "fit"."""
    import copy

    from lowbit.train import qnet
    from lowbit.train.loop import evaluate

    out = {}
    for alpha in ("reciprocal", "fit"):
        m = copy.deepcopy(q)
        qnet.calibrate_activations(m, train[0], generator=torch.Generator().manual_seed(0),
                                   alpha=alpha)
        for act in qnet._soft_acts(m):
            act.quant_enabled = True
        qnet.set_hard(m, True)
        out[f"{alpha}_hard"] = evaluate(m, *test)[1]
        qnet.reestimate_batchnorm(m, train[0], qnet.BN_BATCHES, batch_size, "none",
                                  torch.Generator().manual_seed(1))
        out[f"{alpha}_hard_bn_reestimated"] = evaluate(m, *test)[1]
    return out


if __name__ == "__main__":
    main()
