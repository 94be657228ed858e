#!/usr/bin/env python3
"""serve_metrics.py FILE [SERIES...]: a strict parser of the Prometheus text format (0.0.4) for
the serve tests, standard library only.

Checks every line of FILE (a /metrics body): HELP and TYPE comments well formed, each family's
TYPE given once and before its samples, samples of a family together, metric and label names
valid, label values correctly escaped and quoted, values numbers, no series twice; counters end
in _total; histograms have cumulative buckets ending at le="+Inf" that equal _count, and _sum.
Exits 1 with the line number and the reason on the first fault. Then prints the value of each
SERIES asked (as written in the file, e.g. 'darkhorse_running_sequences' or
'darkhorse_requests_finished_total{reason="stop"}'), one per line, or 'absent'."""
import math
import re
import sys

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class Bad(Exception):
    pass


def parse_value(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)", s):
        raise Bad("value %r is not a number" % s)
    return float(s)


def parse_labels(s, i):
    """labels from s[i] == '{' on: (tuple of (name, value), index after '}')"""
    labels, i = [], i + 1
    while True:
        if s[i] == "}":
            return tuple(labels), i + 1
        m = LABEL.match(s, i)
        if not m:
            raise Bad("bad label name at column %d" % (i + 1))
        name, i = m.group(0), m.end()
        if s[i : i + 2] != '="':
            raise Bad('label %s: expected =" at column %d' % (name, i + 1))
        i += 2
        v = []
        while True:
            if i >= len(s):
                raise Bad("label %s: unterminated value" % name)
            c = s[i]
            if c == "\\":
                if i + 1 >= len(s) or s[i + 1] not in '\\"n':
                    raise Bad("label %s: bad escape" % name)
                v.append({"\\": "\\", '"': '"', "n": "\n"}[s[i + 1]])
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise Bad("label %s: raw newline" % name)
            else:
                v.append(c)
                i += 1
        if name in (l[0] for l in labels):
            raise Bad("label %s given twice" % name)
        labels.append((name, "".join(v)))
        if s[i] == ",":
            i += 1
        elif s[i] != "}":
            raise Bad("expected , or } at column %d" % (i + 1))


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            return base
    return name


def parse(text):
    if not text.endswith("\n"):
        raise Bad("the body does not end with a newline")
    types, helps, samples, done, series = {}, set(), {}, set(), {}
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        try:
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                    if len(parts) < 4 or not NAME.fullmatch(parts[2]):
                        raise Bad("malformed %s line" % parts[1])
                    name = parts[2]
                    if parts[1] == "TYPE":
                        if name in types:
                            raise Bad("TYPE of %s given twice" % name)
                        if name in samples:
                            raise Bad("TYPE of %s after its samples" % name)
                        if parts[3] not in TYPES:
                            raise Bad("unknown type %r" % parts[3])
                        if parts[3] == "counter" and not name.endswith("_total"):
                            raise Bad("counter %s does not end in _total" % name)
                        types[name] = parts[3]
                    else:
                        if name in helps:
                            raise Bad("HELP of %s given twice" % name)
                        helps.add(name)
                continue
            if not line.strip():
                raise Bad("empty line")
            m = NAME.match(line)
            if not m:
                raise Bad("bad metric name")
            name, i = m.group(0), m.end()
            labels = ()
            if i < len(line) and line[i] == "{":
                labels, i = parse_labels(line, i)
            if i >= len(line) or line[i] != " ":
                raise Bad("expected a space before the value")
            rest = line[i + 1 :].split(" ")
            if len(rest) not in (1, 2):
                raise Bad("expected a value and an optional timestamp")
            value = parse_value(rest[0])
            fam = family_of(name, types)
            if fam not in types:
                raise Bad("sample of %s before its TYPE" % fam)
            if fam != current:
                if fam in done:
                    raise Bad("samples of %s are not together" % fam)
                if current:
                    done.add(current)
                current = fam
            key = (name, labels)
            if key in series:
                raise Bad("series %s%s given twice" % (name, dict(labels)))
            series[key] = value
            samples.setdefault(fam, []).append((name, dict(labels), value))
        except Bad as e:
            raise Bad("line %d: %s: %s" % (n, e, line[:120]))
        except IndexError:
            raise Bad("line %d: truncated: %s" % (n, line[:120]))
    for fam, kind in types.items():
        if kind == "histogram":
            check_histogram(fam, samples.get(fam, []))
    return series


def check_histogram(fam, rows):
    groups = {}
    for name, labels, value in rows:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == fam + "_bucket":
            if "le" not in labels:
                raise Bad("%s: a bucket without le" % fam)
            g["buckets"].append((parse_value(labels["le"]), value))
        elif name == fam + "_sum":
            g["sum"] = value
        elif name == fam + "_count":
            g["count"] = value
        else:
            raise Bad("%s: unexpected sample %s" % (fam, name))
    for g in groups.values():
        b = g["buckets"]
        if not b or b[-1][0] != math.inf:
            raise Bad('%s: the last bucket is not le="+Inf"' % fam)
        for (le0, c0), (le1, c1) in zip(b, b[1:]):
            if not le1 > le0 or c1 < c0:
                raise Bad("%s: buckets not increasing and cumulative" % fam)
        if g["count"] is None or g["sum"] is None or g["count"] != b[-1][1]:
            raise Bad("%s: _count missing or not the +Inf bucket" % fam)


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    try:
        series = parse(text)
    except Bad as e:
        print("metrics: %s" % e, file=sys.stderr)
        return 1
    for q in sys.argv[2:]:
        m = NAME.match(q)
        labels = parse_labels(q + " ", m.end())[0] if m.end() < len(q) else ()
        v = series.get((m.group(0), labels))
        print("absent" if v is None else ("%d" % v if math.isfinite(v) and v == int(v) else repr(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
