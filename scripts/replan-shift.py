#!/usr/bin/env python3
"""replan-shift.py: live re-placement under a traffic shift (docs/cluster.md, "Re-placement
under a traffic shift"). Expects a serve already running on 127.0.0.1:PORT (default 18089)
with --api-key k and --routing-replay of a two-domain trace in --replay-order domain. Sends
N1 greedy requests of 200 tokens, 8 at a time (the first domain), asks for a re-plan, then N2
more (the second domain) and a re-plan again; prints both /admin/replan answers. With PAUSE
(seconds), phase 1 runs in two halves with that pause between and no re-plan: a control for
the step times after the pause of a re-plan (scripts/replan-steps.py, "after a pause").
   scripts/replan-shift.py N1 N2 [PORT [PAUSE]]"""
import json, sys, time, urllib.request, concurrent.futures as cf
URL = "http://127.0.0.1:%s" % (sys.argv[3] if len(sys.argv) > 3 else "18089")
def req(i):
    body = json.dumps({"model": "x", "prompt": "Request %d about the law of contracts" % i, "max_tokens": 200,
                       "temperature": 0, "ignore_eos": True}).encode()
    r = urllib.request.Request(URL + "/v1/completions", body, {"Content-Type": "application/json", "Authorization": "Bearer k"})
    with urllib.request.urlopen(r, timeout=300) as f: return json.load(f)["usage"]["completion_tokens"]
def phase(n, label):
    t0 = time.time()
    with cf.ThreadPoolExecutor(8) as ex: toks = sum(ex.map(req, range(n)))
    print("%s: %d requests, %d tokens, %.1f s" % (label, n, toks, time.time() - t0), file=sys.stderr)
def replan(label):
    r = urllib.request.Request(URL + "/admin/replan", b"", {"Authorization": "Bearer k"}, method="POST")
    with urllib.request.urlopen(r, timeout=300) as f: print(label, f.read().decode())
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0
if pause > 0:
    phase(int(sys.argv[1]) // 2, "phase 1 (law), first half")
    time.sleep(pause)
    phase(int(sys.argv[1]) - int(sys.argv[1]) // 2, "phase 1 (law), second half")
else:
    phase(int(sys.argv[1]), "phase 1 (law)")
replan("replan after law:")
phase(int(sys.argv[2]), "phase 2 (translation)")
replan("replan after translation:")
