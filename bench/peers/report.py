#!/usr/bin/env python3
"""Print a readable table of benchmark JSON lines (one object per line).

Usage: report.py FILE.jsonl [...]   (or JSON lines on stdin)
Columns: workload, system, mode/command, metric, value, unit, then every other
parameter as key=value (bulky keys such as per-run samples are left out).
"""
import argparse
import json
import sys

MAIN = ("workload", "system", "metric", "value", "unit")
HIDDEN = {"samples", "samples_us", "python", "celery", "redis", "pool",
          "avg_latency_ms", "loadavg_1m"}


def fmt_value(v):
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def load(paths):
    rows = []
    streams = [open(p) for p in paths] if paths else [sys.stdin]
    for s in streams:
        for line in s:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*")
    rows = load(p.parse_args().files)
    table = [("workload", "system", "mode", "metric", "value", "unit", "params")]
    for r in sorted(rows, key=lambda r: str(r.get("workload", ""))):  # stable
        mode = r.get("mode") or r.get("command") or ""
        extra = " ".join(f"{k}={r[k]}" for k in r
                         if k not in MAIN and k not in HIDDEN and k not in ("mode", "command"))
        table.append((str(r.get("workload", "")), str(r.get("system", "")), str(mode),
                      str(r.get("metric", "")), fmt_value(r.get("value", "")),
                      str(r.get("unit", "")), extra))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for i, row in enumerate(table):
        cells = [row[j].rjust(widths[j]) if j == 4 else row[j].ljust(widths[j])
                 for j in range(6)]
        print("  ".join(cells + [row[6]]).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  ------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
