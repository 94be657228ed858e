#!/usr/bin/python3
"""plot-placement.py: the pictures of docs/placement.md, from scripts/bench-placement.sh's
results and plans (run it first, with --grid --curve for every point) and the vendored trace.

  scripts/plot-placement.py [--bench DIR] [--tool PATH] [--trace FILE] [--out DIR] [--layer L]

Writes into docs/ (default):
  placement-loads.png     expert load per layer and domain (first half), one heatmap a domain
  placement-steps.png     worker load across decode steps of one layer (second half), a panel
                          per plan: contiguous, eplb (turns), eplb (smart), the default
  placement-tradeoff.png  imbalance against fan-out, decode and prefill, every algorithm and
                          slot count the benchmark ran, with affinity's curve over --lambda
Uses Debian's python3-matplotlib (with Debian's /usr/bin/python3), installed with apt-get when
missing (needs root or sudo)."""
import argparse
import collections
import os
import subprocess
import sys


def need_matplotlib():
    try:
        import matplotlib
    except ImportError:
        if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
            # another python3 (pyenv, a venv): Debian's package serves Debian's python
            os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
        print("plot-placement: installing python3-matplotlib (apt-get)", file=sys.stderr)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "python3-matplotlib"],
                       check=True, stdout=subprocess.DEVNULL)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tool_lines(tool, *args):
    r = subprocess.run([tool, *args], check=True, capture_output=True, text=True)
    return r.stdout.split("\n")


def plot_loads(plt, tool, trace, path):
    load = collections.defaultdict(dict)  # domain -> (layer, expert) -> count
    for line in tool_lines(tool, "loads", trace, "first-half"):
        if line:
            d, l, e, c = line.split()
            load[d][(int(l), int(e))] = float(c)
    doms = list(load)
    L = 1 + max(l for l, _ in load[doms[0]])
    E = 1 + max(e for _, e in load[doms[0]])
    fig, axes = plt.subplots(1, len(doms), figsize=(3.6 * len(doms) + 1, 4.2), squeeze=False,
                             constrained_layout=True)
    for ax, d in zip(axes[0], doms):
        rows = []
        for l in range(L):
            tot = sum(load[d][(l, e)] for e in range(E)) or 1
            rows.append([load[d][(l, e)] / tot * E for e in range(E)])  # 1 = an even share
        im = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=0, vmax=4, origin="lower")
        ax.set_title(d)
        ax.set_xlabel("expert")
    axes[0][0].set_ylabel("MoE layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="load / even share (capped at 4)")
    fig.suptitle("ESFT, first half: each domain's load per (layer, expert)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(plt, tool, trace, bench, layer, path):
    panels = [("contiguous", "smart", "contiguous"), ("eplb-turns", "turns", "eplb, replicas in turn"),
              ("eplb-smart", "smart", "eplb, smart choice"), ("default", "smart", "default (affinity)")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.2 * len(panels)), sharex=True, sharey=True)
    for ax, (name, disp, title) in zip(axes, panels):
        plan = os.path.join(bench, "%s-w4-s18.plan" % name)
        steps = [list(map(float, s.split())) for s in
                 tool_lines(tool, "steps", trace, plan, "4", "second-half", "decode", "64", str(layer), disp) if s]
        for w in range(4):
            ax.plot([s[w] for s in steps], lw=0.8, label="rank %d" % (w + 1))
        mean = sum(steps[0]) / 4
        imb = sum(max(s) / (sum(s) / 4) for s in steps) / len(steps)
        ax.axhline(mean, color="k", lw=0.6, ls=":")
        ax.set_title("%s: imbalance mean %.3f in this layer" % (title, imb), fontsize=9)
        ax.set_ylabel("pairs")
    axes[0].legend(ncol=4, fontsize=7, loc="upper right")
    axes[-1].set_xlabel("decode step (second half, B = 64)")
    fig.suptitle("Worker load across steps, MoE layer %d, 4 workers, 18 slots" % layer)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(plt, bench, path):
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(bench, "results.tsv")) if l.strip()]
    Ws = sorted({int(r[1]) for r in rows})
    fig, axes = plt.subplots(2, len(Ws), figsize=(4.6 * len(Ws), 8), squeeze=False)
    marks = {"contiguous": "s", "balanced": "D", "eplb-turns": "v", "eplb-smart": "^", "domain": "x", "default": "o"}
    for j, W in enumerate(Ws):
        for i, (mode, ci, cf) in enumerate((("decode", 4, 6), ("prefill", 7, 9))):
            ax = axes[i][j]
            curve = sorted((float(r[cf]), float(r[ci])) for r in rows if int(r[1]) == W and r[0].startswith("affinity-l"))
            if curve:
                ax.plot([c[0] for c in curve], [c[1] for c in curve], "-", color="grey", lw=0.8,
                        label="affinity over --lambda")
            for name, m in marks.items():
                pts = [r for r in rows if int(r[1]) == W and r[0] == name]
                for r in pts:
                    extra = int(r[2]) - -(-64 // W)
                    ax.plot(float(r[cf]), float(r[ci]), m, ms=4 + 2 * extra, mfc="none" if extra == 0 else None,
                            color="C%d" % list(marks).index(name),
                            label=name if r is pts[0] else None)
            ax.set_title("%s, W = %d (bigger: more slots)" % (mode, W), fontsize=9)
            ax.set_xlabel("fan-out (workers a token visits)")
            ax.set_ylabel("imbalance mean")
            ax.grid(alpha=0.3)
            if W == 4 and mode == "decode":
                ax.axhline(1.05, color="r", lw=0.5, ls="--")
                ax.axvline(2.9, color="r", lw=0.5, ls="--")
            ax.legend(fontsize=6)
    fig.suptitle("Held-out ESFT (plans from the first half, judged on the second), B = 64")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(root, "build", "bench-placement"))
    ap.add_argument("--tool", default=os.path.join(root, "build", "tests", "place_tool"))
    ap.add_argument("--trace", default=os.path.join(root, "data", "traces", "esft.dhtrace"))
    ap.add_argument("--out", default=os.path.join(root, "docs"))
    ap.add_argument("--layer", type=int, default=12)
    a = ap.parse_args()
    if not os.path.exists(a.tool):
        sys.exit("plot-placement: %s is missing (cmake --build build --target place_tool)" % a.tool)
    if not os.path.exists(os.path.join(a.bench, "results.tsv")):
        sys.exit("plot-placement: no %s/results.tsv: run scripts/bench-placement.sh --grid --curve first" % a.bench)
    plt = need_matplotlib()
    plot_loads(plt, a.tool, a.trace, os.path.join(a.out, "placement-loads.png"))
    plot_steps(plt, a.tool, a.trace, a.bench, a.layer, os.path.join(a.out, "placement-steps.png"))
    plot_tradeoff(plt, a.bench, os.path.join(a.out, "placement-tradeoff.png"))
    print("plot-placement: wrote placement-loads.png, placement-steps.png, placement-tradeoff.png in " + a.out,
          file=sys.stderr)


if __name__ == "__main__":
    main()
