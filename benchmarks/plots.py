"""PNG plots of a benchmark run: steady epoch time per peer (log axis) and test accuracy (or
final loss) against wall-clock time to train."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, NullFormatter


def plot_results(results, out: Path) -> list[Path]:
    ok = [r for r in results if "epoch_s" in r]
    workloads = list(dict.fromkeys(r["workload"] for r in ok))
    paths = []
    if not workloads:  # every peer missing or failed: nothing to draw
        return paths
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.6),
                             squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        rows = sorted((r for r in ok if r["workload"] == workload), key=lambda r: r["epoch_s"])
        ax.barh([r["peer"] for r in rows], [r["epoch_s"] for r in rows],
                color=["tab:red" if r["peer"] == "symnet" else "tab:gray" for r in rows])
        log = _time_axis(ax, [r["epoch_s"] for r in rows])
        ax.invert_yaxis()
        ax.set_title(workload)
        ax.set_xlabel(("steady epoch time (s" if workload != "tiny" else "1000 steps (s")
                      + (", log)" if log else ")"))
    fig.tight_layout()
    paths.append(out / "epoch_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.6),
                             squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for r in (r for r in ok if r["workload"] == workload):
            wall = r["setup_s"] + sum(r["rounds_s"])  # one process's rounds
            ax.scatter(wall, r["metric"], color="tab:red" if r["peer"] == "symnet" else
                       "tab:gray")
            ax.annotate(r["peer"], (wall, r["metric"]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        log = _time_axis(ax, [r["setup_s"] + sum(r["rounds_s"]) for r in ok
                              if r["workload"] == workload])
        ax.set_title(workload)
        ax.set_xlabel("setup + training (s, log)" if log else "setup + training (s)")
        ax.set_ylabel(next(r["metric_name"] for r in ok if r["workload"] == workload))
        ax.ticklabel_format(axis="y", useOffset=False)  # tiny's losses agree to 1e-7: no offset
    fig.tight_layout()
    paths.append(out / "accuracy_vs_time.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _time_axis(ax, seconds) -> bool:
    """A log axis when the times span more than a decade, else a linear one from 0: within a
    decade a log axis has no power of ten to label, and its bars make ×2 look like ×20."""
    if max(seconds) <= 10 * min(seconds):
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(4))  # labels of a few digits each, apart
        return False
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
    return True
