#!/usr/bin/env python3
"""replan-steps.py: step times around live re-plans against windows without one, from the
coordinator's DH_REPLAN_STEP_LOG (coordinator/replan.c: "step ms phase wall" per step, phase R
while a re-plan is prepared, S for the 20 steps watched after its switch, - otherwise).

For each re-plan (a run of R and S steps, N of them) the ratio is its longest step over the
median of the 100 steps before it (docs/cluster.md's goal: at most 1.5). The control is every
window of N steps in the same run that has no re-plan step in it nor in the 100 steps before it
(sliding by one step), with the same ratio: the machine's own noise at that moment. Printed:
the re-plan's ratio, the control windows' median, 90th percentile and largest ratio, the share of
them at most 1.5, and the share at least as bad as the re-plan.

A re-plan asked while the server is idle (scripts/replan-shift.py) has no step while it is
prepared: its window is the first 20 steps after the pause, new requests' prefills among them.
Its fair control is the same: the 20 steps after every other pause of more than a second in the
step log (no re-plan in them nor in the 100 before), listed under "after a pause".
   scripts/replan-steps.py STEPLOG [--skip S]   (--skip: ignore the first S steps, a start-up)"""
import statistics, sys

BEFORE = 100

def ratio(ms, start, n):
    return max(ms[start:start + n]) / statistics.median(ms[start - BEFORE:start])

def main():
    args = sys.argv[1:]
    skip = 0
    if "--skip" in args:
        i = args.index("--skip")
        skip = int(args[i + 1])
        del args[i:i + 2]
    rows = [l.split() for l in open(args[0]) if l.strip()]
    rows = [(int(r[0]), float(r[1]), r[2], float(r[3])) for r in rows if len(r) >= 4][skip:]
    ms = [r[1] for r in rows]
    # a pause: the step ended more than a second plus its own time after the one before
    paused = [i > 0 and rows[i][3] - rows[i - 1][3] > 1.0 + rows[i][1] / 1e3 for i in range(len(rows))]
    busy = [r[2] != "-" for r in rows]
    windows, i = [], 0
    while i < len(rows):
        if not busy[i]:
            i += 1
            continue
        j = i
        while j < len(rows) and busy[j]: j += 1
        windows.append((i, j - i))
        i = j
    if not windows:
        print("no re-plan in %s" % args[0]); return 1
    # clean[k]: steps k-BEFORE..k-1 and k itself hold no re-plan step
    prefix = [0]
    for b in busy: prefix.append(prefix[-1] + b)
    def clean(a, b): return a >= 0 and prefix[b] - prefix[a] == 0
    print("%-8s %5s %9s %9s %7s | %8s %7s %7s %7s %9s %10s" % ("re-plan", "steps", "median", "longest", "ratio",
          "controls", "median", "p90", "max", "<=1.5", ">=re-plan"))
    worst = 0
    for k, (s, n) in enumerate(windows):
        if s < BEFORE:
            print("re-plan %d at step %d: fewer than %d steps before it, skipped" % (k + 1, rows[s][0], BEFORE)); continue
        med = statistics.median(ms[s - BEFORE:s])
        r = max(ms[s:s + n]) / med
        worst = max(worst, r)
        ctl = sorted(ratio(ms, c, n) for c in range(BEFORE, len(ms) - n + 1) if clean(c - BEFORE, c + n))
        if not ctl:
            print("%-8d %5d %9.1f %9.1f %7.2f | no window of %d steps without a re-plan" % (k + 1, n, med, max(ms[s:s + n]), r, n)); continue
        p90 = ctl[min(len(ctl) - 1, int(0.9 * len(ctl)))]
        print("%-8d %5d %9.1f %9.1f %7.2f | %8d %7.2f %7.2f %7.2f %8.0f%% %9.0f%%" % (k + 1, n, med, max(ms[s:s + n]), r,
              len(ctl), statistics.median(ctl), p90, ctl[-1], 100.0 * sum(c <= 1.5 for c in ctl) / len(ctl),
              100.0 * sum(c >= r for c in ctl) / len(ctl)))
        if paused[s]:
            print("         (re-plan %d began after a pause: it was prepared while nothing ran)" % (k + 1))
    after = [(c, ratio(ms, c, 20)) for c in range(BEFORE, len(ms) - 20 + 1) if paused[c] and clean(c - BEFORE, c + 20)]
    for c, r in after:
        print("after a pause, no re-plan: steps %d-%d, longest %.1f ms, %.2fx the median %.1f ms of the %d before" % (
              rows[c][0], rows[c + 19][0], max(ms[c:c + 20]), r, statistics.median(ms[c - BEFORE:c]), BEFORE))
    return 0

sys.exit(main())
