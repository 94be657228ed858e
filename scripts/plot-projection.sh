#!/usr/bin/env bash
# plot-projection.sh: docs/cluster.md's projection beyond this machine, on paper. With the
# simulator calibrated by scripts/bench-sim-vs-cluster.sh (DATA/calibration.json: one core's
# weight read bandwidth and expert rate, the coordinator's own work a step), genesis-1b decodes
# the vendored ESFT trace (f32 on the wire, contiguous plans, the MTP block off) on W = 2, 4, 8,
# 16 worker machines, each the speed of one core here or of a 16-core box (16 such cores,
# scaling assumed linear, and 4 times one core's read bandwidth), with 1 or 10 Gbit/s links
# (the coordinator's own link too) and 50 us one-way latency (an assumption: nothing here
# measures a network). The coordinator is one 16-core box (its own work one core's over 16).
# Writes the table to stdout, the figures to DATA/projection.json and the picture to
# docs/cluster-projection.png.
#   scripts/plot-projection.sh        (Env: MODEL, DATA as bench-sim-vs-cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-darkhorse.sh projection
model=${MODEL:-/work/models-local/genesis-1b}
data=${DATA:-docs/cluster-data}
ensure_model genesis-1b "$model"
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then # Debian's python, Debian's matplotlib
  echo "projection: installing python3-matplotlib" >&2
  apt-get install -y python3-matplotlib >/dev/null
fi
[ -f "$data/calibration.json" ] ||
  { echo "projection: no $data/calibration.json: run scripts/bench-sim-vs-cluster.sh" >&2; exit 1; }
/usr/bin/python3 - "$bin" "$model" "$data" <<'PY'
import json, os, subprocess, sys, tempfile
bin_, model, data = sys.argv[1:4]
cfg = json.load(open(f"{model}/config.json"))
layers = list(range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"] + cfg.get("num_nextn_predict_layers", 0)))
E = cfg["n_routed_experts"]
tmp = tempfile.mkdtemp()
def plan(W):
    path = f"{tmp}/c{W}.plan"
    with open(path, "w") as f:
        f.write(f"darkhorse-placement 1\nworkers {W}\nexperts {E}\nalgo contiguous\n")
        for l in layers:
            for w in range(W):
                f.write(f"layer {l} worker {w + 1}: {w * E // W}-{(w + 1) * E // W - 1}\n")
    return path
cal = json.load(open(f"{data}/calibration.json"))
rows = []
for B in (16, 64):
    for cores in (1, 16):
        for gbps in (1, 10):
            for W in (2, 4, 8, 16):
                out = subprocess.run([bin_, "simulate", "--trace", "data/traces/esft.dhtrace", "--plan", plan(W),
                                      "--batch", str(B), "--mode", "decode", "--model", model, "--json", "--no-mtp",
                                      "--coord-ms", "%.3f" % cal["coord_ms"][str(B)], "--coord-threads", "16",
                                      "--coord-gflops", "%.4f" % cal["gflops"],
                                      "--worker-rate", "%.4f" % (cal["gflops"] * cores),
                                      "--mem-gbs", "%.4f" % (cal["read_gbs"] * (4 if cores == 16 else 1)),
                                      "--link-gbps", str(gbps), "--coord-link-gbps", str(gbps), "--link-us", "50"],
                                     capture_output=True, text=True, check=True).stdout
                p = json.loads(out)
                rows.append({"batch": B, "worker_cores": cores, "gbps": gbps, "workers": W,
                             "tok_s": B * 1e3 / p["step_ms_mean"], "step_ms": p["step_ms_mean"],
                             "exchange_ms": p["exchange_ms_mean"], "coord_ms": p["coord_ms_mean"],
                             "imbalance": p["imbalance_mean"], "bytes_per_token": p["bytes_per_token"]})
json.dump(rows, open(f"{data}/projection.json", "w"), indent=1)
print("| batch | worker | link | W=2 tok/s | W=4 | W=8 | W=16 | coordinator's share of the step at W=16 |")
print("|---|---|---|---|---|---|---|---|")
for B in (16, 64):
    for cores in (1, 16):
        for gbps in (1, 10):
            r = [x for x in rows if x["batch"] == B and x["worker_cores"] == cores and x["gbps"] == gbps]
            last = r[-1]
            print(f"| {B} | {'1 core' if cores == 1 else '16 cores'} | {gbps} Gbit/s | " +
                  " | ".join("%.0f" % x["tok_s"] for x in r) + f" | {100 * last['coord_ms'] / last['step_ms']:.0f}% |")
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
for ax, B in zip(axes, (16, 64)):
    for cores, ls in ((1, "-"), (16, "--")):
        for gbps, color in ((1, "tab:orange"), (10, "tab:blue")):
            r = [x for x in rows if x["batch"] == B and x["worker_cores"] == cores and x["gbps"] == gbps]
            ax.plot([x["workers"] for x in r], [x["tok_s"] for x in r], ls, color=color, marker="o",
                    label=f"workers of {cores} core{'s' if cores > 1 else ''}, {gbps} Gbit/s")
    ceiling = B * 1e3 / min(x["coord_ms"] for x in rows if x["batch"] == B)
    ax.axhline(ceiling, color="gray", linestyle=":", label="coordinator alone (16 cores)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([2, 4, 8, 16], ["2", "4", "8", "16"])
    ticks = [100, 200, 300, 500, 1000, 2000, 3000, 5000]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("worker machines")
    ax.set_title(f"genesis-1b decode, batch {B}, ESFT routing")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("decode tok/s (simulated)")
axes[1].legend(fontsize=8, loc="lower right")
fig.suptitle("Projection from the simulator calibrated on this machine (docs/cluster.md)", fontsize=10)
fig.tight_layout()
fig.savefig("docs/cluster-projection.png", dpi=110)
print("\nwrote docs/cluster-projection.png", file=sys.stderr)
PY
