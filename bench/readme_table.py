#!/usr/bin/env python3
"""The normalization-layer table of docs/benchmarks.md from bench JSON files: the median over runs (processes) of each cell.

usage: bench/readme_table.py --tuned RUN.json [RUN.json ...] --shipped RUN.json [RUN.json ...]
  --tuned    runs made with --malloc-reuse (libtorch reuses its buffers)
  --shipped  runs made without it (libtorch as shipped)
"""
import json, statistics, sys

groups, current = {"--tuned": [], "--shipped": []}, None
for arg in sys.argv[1:]:
    if arg in groups:
        current = arg
    elif current is None:
        sys.exit(__doc__)
    else:
        groups[current].append(json.load(open(arg)))
tuned, shipped = groups["--tuned"], groups["--shipped"]
if not tuned or not shipped:
    sys.exit(__doc__)

threads = max(r["threads"] for r in tuned[0]["rows"])
key = lambda r: (r["case"], r["op"], r["threads"])

def median(runs, k, field):
    values = [r[field] for run in runs for r in run["rows"] if key(r) == k and r.get(field) is not None]
    return statistics.median(values) if values else None

def f(v, digits=2):
    return "" if v is None else f"{v:.{digits}f}"

print("| case | op | SharpNorm ms | libtorch ms, tuned malloc | speed-up | x floor | SharpNorm ms | libtorch ms, as shipped | speed-up | chain/compact bwd (1 thread) |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in tuned[0]["rows"]:
    if r["threads"] != threads:
        continue
    k = key(r)
    chain = median(tuned, (r["case"], r["op"], 1), "chainRatio") if r["op"] == "train fwd+bwd" else None
    print(f"| {r['case']} | {r['op']} | {f(median(tuned, k, 'sharpMs'), 3)} | {f(median(tuned, k, 'torchMs'), 3)} | "
          f"{f(median(tuned, k, 'speedUp'))} | {f(median(tuned, k, 'sharpXFloor'))} | {f(median(shipped, k, 'sharpMs'), 3)} | "
          f"{f(median(shipped, k, 'torchMs'), 3)} | {f(median(shipped, k, 'speedUp'))} | {f(chain, 1)} |")
print()
m = tuned[0]["machine"]
bw = lambda kind: statistics.median(b["gbPerS"] for run in tuned for b in run["bandwidth"][kind] if b["threads"] == threads)
print(f"{m['cpu']}, {m['cores']} cores, {m['dotNet']}, {threads} threads, float32. Each cell is the median over "
      f"{len(tuned)} (tuned) or {len(shipped)} (as shipped) processes of the median of {tuned[0]['runs']} timed runs after "
      f"{tuned[0]['warmup']} warm-ups. Bandwidth probed in the same runs: read {bw('read'):.1f} GB/s, write {bw('write'):.1f} GB/s.")
