"""The A/B table of bench/ab.sh and bench/ab-local.sh: reads JSON lines
tagged with "side" (A or B) and prints, per figure, the median of each side
and the ratio B/A as a Markdown table.

    python3 bench/ab_table.py FILE.jsonl
"""
import json
import statistics
import sys

# Fields that are not part of a figure's identity.
SKIP = {"side", "value", "loadavg_1m", "samples", "samples_us", "seconds", "runs",
        "vmhwm_mib", "celeriac", "best_speedup", "api", "interleaved"}
IDENTITY = ("workload", "system", "metric", "unit")


def main(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    groups = {}
    for r in rows:
        params = {k: v for k, v in r.items() if k not in SKIP and k not in IDENTITY}
        key = tuple(r[k] for k in IDENTITY) + (json.dumps(params, sort_keys=True),)
        groups.setdefault(key, {"A": [], "B": []})[r["side"]].append(r["value"])
    print("| workload | system | metric | params | A median | B median | B/A | runs |")
    print("|---|---|---|---|---|---|---|---|")
    for (w, s, m, u, p), v in sorted(groups.items()):
        if not v["A"] or not v["B"]:
            continue
        a, b = statistics.median(v["A"]), statistics.median(v["B"])
        ratio = b / a if a else float("nan")
        params = ", ".join(f"{k}={x}" for k, x in json.loads(p).items()
                           if not isinstance(x, (list, dict)))
        print(f"| {w} | {s} | {m} | {params} | {a:.4g} {u} | {b:.4g} {u} | {ratio:.3f} "
              f"| {len(v['A'])}+{len(v['B'])} |")


if __name__ == "__main__":
    main(sys.argv[1])
