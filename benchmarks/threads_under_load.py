"""Training-step times with another process busy on the machine (issue 7, item 2).

Variants, each a worker subprocess (the OpenMP wait policy is fixed when torch loads libgomp):
1 or 2 torch threads x libgomp's default wait (spin ~300k iterations, then sleep) or
``OMP_WAIT_POLICY=PASSIVE``, and ``policy``: what ``import lowbit`` + ``lowbit.threads`` choose.
Conditions: quiet, and loaded (one competing CPU-bound process, a Python busy loop: one core
taken). Cases: LeNet300 on MNIST batch 100 (the lowbit train default), LeNet300 batch 1000,
ResNet-20 on a CIFAR-10-sized batch of 128, and ResNet-20 with Ivan W4A4 on every layer (numba's
parallel kernels). All workers start once and then wait on stdin; the driver runs round after
round, quiet and loaded in turn, each case for every variant in turn (interleaved), so
ratios compare variants measured within seconds of each other. Each block is bounded in steps
and seconds; the competitor stops with the driver (and by its own deadline).

    python benchmarks/threads_under_load.py --data-dir /work/shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "threads_under_load"
VARIANTS = {"t1-spin": (1, "spin"), "t1-passive": (1, "passive"), "t2-spin": (2, "spin"),
            "t2-passive": (2, "passive"), "policy": (None, "lowbit")}
# case -> (steps per block, seconds per block at most)
CASES = {"lenet300": (40, 3.0), "lenet300-b1000": (10, 3.0), "resnet20": (2, 5.0),
         "resnet20-w4a4": (1, 5.0)}
EPOCH_STEPS = 150  # LeNet300 batch 100: a quarter of an MNIST epoch
COMPETITOR = ("import os, sys, time\nend = time.time() + float(sys.argv[1])\n"
              "parent = os.getppid()\n"
              "while time.time() < end and os.getppid() == parent:\n"
              "    for _ in range(200000):\n        pass\n")


# ----------------------------------------------------------------------------- worker side
def _worker(threads: int | None, wait: str, data_dir: str | None) -> None:
    if wait == "spin":  # torch's own default: libgomp loads before lowbit sets its env
        import torch  # noqa: I001
        import lowbit
        os.environ.pop("OMP_WAIT_POLICY", None)  # numba's libgomp loads later: keep it unset
    else:  # as a user gets it: lowbit first, its env defaults reach libgomp
        import lowbit  # noqa: I001
        import torch
    import torch.nn.functional as F

    from lowbit.data import load_dataset
    from lowbit.experiment import model_kwargs
    from lowbit.models import build_model
    from lowbit.threads import configure_threads

    mnist = load_dataset("mnist", "train", data_dir)
    torch.manual_seed(0)
    lenet = build_model(**model_kwargs("lenet300", mnist))
    cifar = dict(name="resnet20", in_channels=3, image_size=32, num_classes=10,
                 mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])
    resnet = build_model(**cifar)
    recipe = lowbit.Recipe("ivan", 4, "ivan", 4, keep_first=False, keep_last=False)
    quant = lowbit.quantize(build_model(**cifar), recipe)
    cimages = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    clabels = torch.randint(0, 10, (128,))
    nets = {"lenet300": (lenet, 100), "lenet300-b1000": (lenet, 1000),
            "resnet20": (resnet, 128), "resnet20-w4a4": (quant, 128)}
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
            for m in (lenet, resnet, quant)}
    position = {"i": 0}

    def batch(case: str, batch_size: int) -> tuple:
        if not case.startswith("lenet"):
            return cimages, clabels
        i = position["i"] % (len(mnist.labels) - batch_size)
        position["i"] += batch_size
        return mnist.images[i:i + batch_size], mnist.labels[i:i + batch_size]

    for line in sys.stdin:
        cmd = json.loads(line)
        net, batch_size = nets[cmd["case"]]
        x0, _ = batch(cmd["case"], batch_size)
        n = configure_threads(threads, net, x0, batch_size)
        net.train()
        times, started = [], time.perf_counter()
        for _ in range(cmd["steps"]):
            x, y = batch(cmd["case"], batch_size)
            t = time.perf_counter()
            loss = F.cross_entropy(net(x.float() / 255), y.long())
            opts[id(net)].zero_grad(set_to_none=True)
            loss.backward()
            opts[id(net)].step()
            times.append(time.perf_counter() - t)
            if time.perf_counter() - started > cmd["budget_s"]:
                break
        print(json.dumps({"ms": [1e3 * s for s in times], "threads": n,
                          "load": os.getloadavg()}), flush=True)


# ----------------------------------------------------------------------------- driver side
def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    return env


def start_workers(data_dir: str | None) -> dict[str, subprocess.Popen]:
    workers = {}
    for name, (threads, wait) in VARIANTS.items():
        env = _clean_env()
        if wait == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        args = [sys.executable, __file__, "--worker", "--wait", wait]
        args += ["--threads", str(threads)] if threads else []
        args += ["--data-dir", data_dir] if data_dir else []
        workers[name] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, env=env)
    return workers


def ask(worker: subprocess.Popen, case: str, steps: int, budget_s: float) -> dict:
    worker.stdin.write(json.dumps({"case": case, "steps": steps, "budget_s": budget_s}) + "\n")
    worker.stdin.flush()
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"worker exited with {worker.wait()}")
    return json.loads(line)


def run(rounds: int, data_dir: str | None, max_seconds: float) -> list[dict]:
    workers, competitor, records = start_workers(data_dir), None, []
    deadline = time.time() + max_seconds
    try:
        for w in workers.values():  # warm-up (and wait for the imports)
            for case in CASES:
                ask(w, case, 1, 30.0)
        for r in range(rounds + 1):  # the last round: the quarter-epoch blocks
            for condition in ("quiet", "loaded"):
                if condition == "loaded":
                    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR,
                                                   str(max_seconds)])
                    time.sleep(1.0)  # let it settle on a core
                plan = CASES.items() if r < rounds else [("lenet300", (EPOCH_STEPS, 30.0))]
                for case, (steps, budget) in plan:
                    for name, w in workers.items():
                        if time.time() > deadline:
                            print("time budget exhausted: partial results", flush=True)
                            return records
                        rec = ask(w, case, steps, budget)
                        rec.update(variant=name, case=case, condition=condition, round=r,
                                   epoch_block=r == rounds)
                        records.append(rec)
                        print(f"{condition:6s} {case:15s} {name:10s} threads {rec['threads']} "
                              f"median {statistics.median(rec['ms']):8.2f} ms  "
                              f"load {rec['load'][0]:.2f}", flush=True)
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
                    competitor = None
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
        for w in workers.values():
            w.stdin.close()
            w.kill()
            w.wait()
    return records


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def summarize(records: list[dict]) -> list[dict]:
    rows = []
    for condition in ("quiet", "loaded"):
        for case in list(CASES) + ["lenet300-epoch"]:
            epoch = case == "lenet300-epoch"
            block = [r for r in records if r["condition"] == condition and r["epoch_block"] == epoch
                     and r["case"] == ("lenet300" if epoch else case)]
            if not block:
                continue
            out = []
            for name in VARIANTS:
                mine = [r for r in block if r["variant"] == name]
                ms = [t for r in mine for t in r["ms"]]
                if not ms:
                    continue
                row = {"condition": condition, "case": case, "variant": name,
                       "threads": sorted({r["threads"] for r in mine}), "steps": len(ms),
                       "median_ms": statistics.median(ms), "p90_ms": _p90(ms),
                       "load_1min": [r["load"][0] for r in mine]}
                if epoch:  # seconds per MNIST epoch (600 steps), from the quarter-epoch block
                    row["epoch_s"] = sum(ms) / 1e3 * 600 / len(ms)
                out.append(row)
            best = min(r["median_ms"] for r in out)
            for row in out:
                row["vs_best"] = row["median_ms"] / best
            rows += out
    return rows


def write(rows: list[dict], meta: dict) -> None:
    from lowbit.report.provenance import meta_header

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Training steps with a competing CPU-bound process (issue 7, item 2)", "",
             f"{meta_header(meta)}.  ",
             f"{meta['machine']}, {meta['cores']} cores, torch {meta['torch']}; "
             f"{meta['rounds']} interleaved "
             f"rounds; {meta['seconds']:.0f} s. Loaded = one Python busy loop beside the run; "
             "quiet = no competitor of ours (other users' load still counts: see the load "
             "column, the 1-minute load average after each block, min-max). Epoch s: 600 "
             "steps at the mean step time of the quarter-epoch block.", "",
             "| condition | case | variant | threads | steps | median ms | p90 ms | × best "
             "| epoch s | load |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        epoch = f"{r['epoch_s']:.1f}" if "epoch_s" in r else ""
        lines.append(f"| {r['condition']} | {r['case']} | {r['variant']} | "
                     f"{'/'.join(map(str, r['threads']))} | {r['steps']} | {r['median_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['vs_best']:.2f} | {epoch} | "
                     f"{min(r['load_1min']):.2f}-{max(r['load_1min']):.2f} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, meta)


def plot(rows: list[dict], meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({r["case"] for r in rows}, key=lambda c: list(CASES).index(c)
                   if c in CASES else len(CASES))
    fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.6))
    for ax, case in zip(axes, cases, strict=True):
        for k, condition in enumerate(("quiet", "loaded")):
            sel = [r for r in rows if r["case"] == case and r["condition"] == condition]
            xs = [i + 0.4 * k for i in range(len(sel))]
            ax.bar(xs, [r["median_ms"] for r in sel], width=0.4, label=condition)
        ax.set_xticks([i + 0.2 for i in range(len(VARIANTS))], list(VARIANTS), rotation=45)
        ax.set_yscale("log")
        ax.set_title(case)
        ax.set_ylabel("median ms per step")
    axes[0].legend()
    fig.suptitle(f"{meta['command']} @ {meta['commit']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "step_times.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir")
    p.add_argument("--max-seconds", type=float, default=540.0)
    p.add_argument("--rewrite", action="store_true",
                   help="rewrite results.md/json and the plot from records.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--wait", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        _worker(a.threads, a.wait, a.data_dir)
        return
    if a.rewrite:
        meta = json.loads((OUT / "results.json").read_text())["meta"]
        write(summarize(json.loads((OUT / "records.json").read_text())), meta)
        return
    started = time.time()
    records = run(a.rounds, a.data_dir, a.max_seconds)
    import torch  # only for the record of its version

    from lowbit.report.provenance import provenance

    prov = provenance()
    meta = {"command": prov["command"], "rounds": a.rounds, "seconds": time.time() - started,
            "commit": prov["commit"], "torch": torch.__version__, "cores": os.cpu_count(),
            "machine": prov["cpu"], "load_at_end": prov["load_average"], "provenance": prov}
    (OUT.mkdir(parents=True, exist_ok=True))
    (OUT / "records.json").write_text(json.dumps(records))
    write(summarize(records), meta)


if __name__ == "__main__":
    main()
