"""What ``lowbit bench`` prints and writes: markdown tables of the three records
(:mod:`lowbit.bench.net`, :mod:`lowbit.bench.kernels`, :mod:`lowbit.bench.coldstart`), the
plot of the network bench, and ``DIR/<name>.{json,md,png}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lowbit.bench.models import NAMES
from lowbit.report.provenance import provenance_line
from lowbit.report.table import markdown_table

COLORS = {"torch": "#8c8c8c", "ort": "#dd8452", "lowbit": "#55a868"}


def _header(r: dict) -> str:
    t = r["threads"]
    return (f"CPU: {r['cpu']} ({r['cpu_kind'] or 'no measured ceilings'}); threads "
            f"{t['requested']} (torch {t.get('torch')}, numba {t.get('numba')}"
            + (f", onnxruntime {t['onnxruntime']}" if "onnxruntime" in t else "")
            + f"); {r['repeat']} interleaved rounds, median [quartiles]")


def _cell(row: dict) -> str:
    if row["batch"] == 1:
        ms = [1e3 * row[k] for k in ("seconds", "seconds_q1", "seconds_q3")]
        return f"{ms[0]:.3g} ms [{ms[1]:.3g}-{ms[2]:.3g}]"
    rates = [row["batch"] / row[k] for k in ("seconds", "seconds_q3", "seconds_q1")]
    return f"{rates[0]:,.0f}/s [{rates[1]:,.0f}-{rates[2]:,.0f}]"


def net_table(r: dict) -> str:
    """One line per contender: size, per batch latency (batch 1) or throughput (samples/s)
    with quartiles and the speed-up over torch fp32, and the argmax agreement."""
    rows, cols = [], [("contender", "contender", ""), ("bytes", "file bytes", ",")]
    for b in r["batches"]:
        what = "latency" if b == 1 else "samples/s"
        cols += [(f"t{b}", f"batch {b} {what}", ""), (f"x{b}", "x torch fp32", "")]
    cols.append(("agree", f"argmax = reference (batch {max(r['batches'])})", ""))
    by = {(row["contender"], row["batch"]): row for row in r["rows"]}
    for name in (n for n in NAMES if n in r["contenders"]):
        out = {"contender": name, "bytes": r["contenders"][name]["file_bytes"]}
        for b in r["batches"]:
            row = by[name, b]
            out[f"t{b}"] = _cell(row)
            x = row["speedup_vs_torch_fp32"]
            out[f"x{b}"] = "" if x is None else f"{x:.2f}"
        out["agree"] = f"{100 * by[name, max(r['batches'])]['agreement']:.1f} %"
        rows.append(out)
    return "\n".join([_header(r), "", markdown_table(rows, cols), "",
                      f"Inputs: {r['inputs']}. ORT int8 calibration: {r['calibration']}."])


def kernel_table(r: dict) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.1f} %"

    rows = [{**row, "shape": f"{row['M']}x{row['N']}x{row['K']}",
             "gmacs": row["macs_per_s"] / 1e9, "ms": 1e3 * row["seconds"],
             "frac": pct(row["fraction_of_ceiling"])} for row in r["rows"]]
    cols = [("kernel", "kernel", ""), ("shape", "MxNxK", ""), ("ms", "ms", ".3g"),
            ("gmacs", "GMAC/s", ",.1f"), ("speedup_vs_fp32", "x fp32", ".2f"),
            ("unit", "unit", ""), ("frac", "of ceiling", "")]
    skipped = ", ".join(f"{k} ({v})" for k, v in r["skipped"].items()) or "none"
    return "\n".join([_header(r), "", markdown_table(rows, cols), "",
                      f"Kernel modules skipped: {skipped}."])


def cold_table(r: dict) -> str:
    rows = [{"setting": k, **v, "numba": "yes" if v["numba_imported"] else "no"}
            for k, v in r["settings"].items()]
    cols = [("setting", "setting", ""), ("seconds", "import+load+predict s", ".3f"),
            ("import_seconds", "import s", ".3f"), ("load_seconds", "load s", ".3f"),
            ("predict_seconds", "1st predict s", ".3f"),
            ("process_seconds", "process s", ".3f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
            ("numba", "numba", "")]
    verdict = "meets" if r["meets_target"] else "misses"
    return "\n".join([markdown_table(rows, cols), "",
                      f"numpy path {verdict} the {r['target_seconds']} s target "
                      f"(median of {r['runs']} fresh processes, torch blocked)."])


def plot(r: dict, path: Path) -> None:
    """Bars per contender: batch-1 latency (ms) and throughput (samples/s) per other batch,
    quartiles as error bars, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = [n for n in NAMES if n in r["contenders"]]
    by = {(row["contender"], row["batch"]): row for row in r["rows"]}
    fig, axes = plt.subplots(1, len(r["batches"]), figsize=(4.2 * len(r["batches"]), 3.6),
                             squeeze=False)
    for ax, b in zip(axes[0], r["batches"], strict=True):
        rows = [by[n, b] for n in names]
        if b == 1:
            v = [1e3 * x["seconds"] for x in rows]
            lo = [1e3 * x["seconds_q1"] for x in rows]
            hi = [1e3 * x["seconds_q3"] for x in rows]
            ax.set_xlabel("latency, ms (lower is better)")
        else:
            v = [b / x["seconds"] for x in rows]
            lo = [b / x["seconds_q3"] for x in rows]
            hi = [b / x["seconds_q1"] for x in rows]
            ax.set_xlabel("samples/s (higher is better)")
        err = [[max(a - c, 0) for a, c in zip(v, lo, strict=True)],
               [max(c - a, 0) for a, c in zip(v, hi, strict=True)]]
        ax.barh(names, v, xerr=err, color=[COLORS[n.split("_")[0]] for n in names])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"batch {b}")
        ax.invert_yaxis()
    fig.suptitle(f"{Path(r['file']).name}: {r['cpu']}, {r['threads']['requested']} thread(s)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out_dir: str | Path, name: str, table: str, with_plot: bool = False) -> None:
    """``out_dir/name.json``, ``name.md`` (provenance line, then the table) and, for the
    network bench, ``name.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(r, indent=1) + "\n")
    head = provenance_line(r["provenance"]) if "provenance" in r else ""
    (out / f"{name}.md").write_text((head + "\n\n" if head else "") + table + "\n")
    if with_plot:
        plot(r, out / f"{name}.png")
