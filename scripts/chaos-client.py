#!/usr/bin/env python3
"""chaos-client.py: streaming clients for serve --launch tests and scripts/chaos.sh.

Each request has a key k that fixes it entirely: a prompt of 8 + k % 8 token ids derived from k,
greedy sampling for even k and seeded sampling (temperature 0.8, top-p 0.95, seed 1000 + k) for
odd k, ignore_eos, max_tokens. So a request can be replayed in a fault-free run and its text
compared. Clients take keys from a shared counter (or from --keys) and send them back to back.

Output: one JSON line per request on --out: key, status, text, finish, completion_tokens,
error, t_start and the wall-clock time of every chunk that carried text. --progress FILE is
written once every client has a stream in progress with at least --progress-chunks chunks.
Standard library only.
"""
import argparse
import http.client
import json
import threading
import time


def request_body(k, max_tokens):
    prompt = [1000 + (k * 7919 + j * 104729) % 100000 for j in range(8 + k % 8)]
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    if k % 2 == 0:
        body["temperature"] = 0
    else:
        body.update({"temperature": 0.8, "top_p": 0.95, "seed": 1000 + k})
    return body


def run_one(port, k, max_tokens, timeout, on_chunk):
    r = {"key": k, "status": 0, "text": "", "finish": None, "completion_tokens": None, "error": None,
         "t_start": time.time(), "chunks": []}
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/completions", json.dumps(request_body(k, max_tokens)),
                  {"Content-Type": "application/json"})
        resp = c.getresponse()
        r["status"] = resp.status
        if resp.status != 200:
            r["error"] = resp.read().decode("utf-8", "replace")[:500]
            r["retry_after"] = resp.getheader("Retry-After")
            c.close()
            return r
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                r["error"] = ev["error"].get("message")
                break
            if ev.get("usage"):
                r["completion_tokens"] = ev["usage"]["completion_tokens"]
            for ch in ev.get("choices", []):
                if ch.get("text"):
                    r["text"] += ch["text"]
                    r["chunks"].append(time.time())
                    on_chunk()
                if ch.get("finish_reason"):
                    r["finish"] = ch["finish_reason"]
        c.close()
        if not done and not r["error"]:
            r["error"] = "the stream ended without [DONE]"
    except Exception as e:  # a connection refused or reset is a failure to report, not a crash
        r["error"] = "%s: %s" % (type(e).__name__, e)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=0, help="send new requests for this long (s)")
    ap.add_argument("--requests", type=int, default=0, help="or: this many requests in all")
    ap.add_argument("--keys", help="or: exactly these keys (comma separated)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress")
    ap.add_argument("--progress-chunks", type=int, default=3)
    a = ap.parse_args()

    lock = threading.Lock()
    keys = [int(x) for x in a.keys.split(",")] if a.keys else None
    state = {"next": 0, "chunks": [0] * a.clients, "progress_done": False}
    t_end = time.time() + a.duration if a.duration else None
    out = open(a.out, "w")

    def take():
        with lock:
            i = state["next"]
            if keys is not None:
                if i >= len(keys):
                    return None
                k = keys[i]
            elif t_end is not None:
                if time.time() >= t_end:
                    return None
                k = i
            elif i >= a.requests:
                return None
            else:
                k = i
            state["next"] = i + 1
            return k

    def client(ci):
        while True:
            k = take()
            if k is None:
                return

            def on_chunk():
                with lock:
                    state["chunks"][ci] += 1
                    if a.progress and not state["progress_done"] and \
                            min(state["chunks"]) >= a.progress_chunks:
                        state["progress_done"] = True
                        open(a.progress, "w").write("%f\n" % time.time())

            with lock:
                state["chunks"][ci] = 0
            r = run_one(a.port, k, a.max_tokens, a.timeout, on_chunk)
            with lock:
                out.write(json.dumps(r) + "\n")
                out.flush()

    ts = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.close()


if __name__ == "__main__":
    main()
