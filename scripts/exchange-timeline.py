#!/usr/bin/env python3
"""exchange-timeline.py: where the MoE exchange's time goes, from the exchange log.

Run the cluster with DH_EXCHANGE_LOG=DIR (every rank writes DIR/exchange-RANK.tsv; with mpirun
pass it with -x DH_EXCHANGE_LOG), then:

    scripts/exchange-timeline.py DIR [--skip-first N] [--json]

Per (exchange, worker), in ms: the coordinator's dispatch and packing (start -> posted), the
header's arrival at the worker (posted -> header: the worker's wake-up, on a host the ranks share
this is its wait for a core), the request's payload (header -> request), the worker's compute,
its reply (compute end -> reply and status sent), and the coordinator's end after that reply
(replied -> combined); per exchange the coordinator's own work in the window (start -> finish:
packing and the shared experts) and the whole exchange (start -> end). Median, mean and 90th
percentile of each. The timestamps are CLOCK_MONOTONIC: only ranks of one host can be compared,
so workers on other hosts are left out of the cross-rank phases (they are not told apart here:
run it on single-host data). --skip-first leaves out the first N exchanges (a warm-up)."""
import argparse
import glob
import json
import os
import statistics
import sys


def read(path):
    with open(path) as f:
        head = f.readline().split()
        return [dict(zip(head, map(float, line.split()))) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--skip-first", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    coord_path = os.path.join(a.dir, "exchange-0.tsv")
    if not os.path.exists(coord_path):
        sys.exit(f"exchange-timeline: no {coord_path} (run with DH_EXCHANGE_LOG={a.dir})")
    coord = {int(r["exchange"]): r for r in read(coord_path) if int(r["exchange"]) > a.skip_first}
    workers = sorted(p for p in glob.glob(os.path.join(a.dir, "exchange-*.tsv")) if p != coord_path)
    if not workers:
        sys.exit(f"exchange-timeline: {a.dir} has the coordinator's log and no worker's")
    phases = {k: [] for k in ("dispatch and packing", "header reaches the worker", "request payload",
                              "worker compute", "worker reply sent", "coordinator ends after the reply",
                              "coordinator's own work in the window", "exchange")}
    for r in coord.values():
        phases["dispatch and packing"].append(r["posted"] - r["start"])
        phases["coordinator's own work in the window"].append(r["finish"] - r["start"])
        phases["exchange"].append(r["end"] - r["start"])
    for path in workers:
        for w in read(path):
            c = coord.get(int(w["exchange"]))
            if c is None:
                continue
            phases["header reaches the worker"].append(w["header"] - c["posted"])
            phases["request payload"].append(w["request"] - w["header"])
            phases["worker compute"].append(w["compute_end"] - w["compute_start"])
            phases["worker reply sent"].append(w["replied"] - w["compute_end"])
            phases["coordinator ends after the reply"].append(c["end"] - w["replied"])
    out = {}
    for k, v in phases.items():
        if not v:
            continue
        s = sorted(x * 1e3 for x in v)
        out[k] = {"n": len(s), "median_ms": statistics.median(s), "mean_ms": statistics.fmean(s),
                  "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))]}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{'phase':40s} {'n':>6s} {'median ms':>10s} {'mean ms':>9s} {'p90 ms':>8s}")
    for k, v in out.items():
        print(f"{k:40s} {v['n']:6d} {v['median_ms']:10.3f} {v['mean_ms']:9.3f} {v['p90_ms']:8.3f}")


if __name__ == "__main__":
    main()
