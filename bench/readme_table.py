#!/usr/bin/env python3
"""Turns two bench JSON files (libtorch tuned with --malloc-reuse, and libtorch as shipped) into README's table."""
import json, sys

tuned, shipped = (json.load(open(p)) for p in sys.argv[1:3])
threads = max(r["threads"] for r in tuned["rows"])
key = lambda r: (r["case"], r["op"], r["threads"])
shipped_rows = {key(r): r for r in shipped["rows"]}
chain = {r["case"]: r for r in tuned["rows"] if r["threads"] == 1 and r["op"] == "train fwd+bwd"}

def f(v, digits=2):
    return "" if v is None else f"{v:.{digits}f}"

print("| case | op | SharpNorm ms | libtorch ms, tuned malloc | speed-up | x floor | SharpNorm ms | libtorch ms, as shipped | speed-up | chain/compact bwd (1 thread) |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in tuned["rows"]:
    if r["threads"] != threads:
        continue
    s = shipped_rows.get(key(r), {})
    c = chain[r["case"]]["chainRatio"] if r["op"] == "train fwd+bwd" else None
    print(f"| {r['case']} | {r['op']} | {f(r['sharpMs'], 3)} | {f(r['torchMs'], 3)} | {f(r['speedUp'])} | {f(r['sharpXFloor'])} | "
          f"{f(s.get('sharpMs'), 3)} | {f(s.get('torchMs'), 3)} | {f(s.get('speedUp'))} | {f(c, 1)} |")
print()
m = tuned["machine"]
bw = {(k, b["threads"]): b["gbPerS"] for k in ("read", "write") for b in tuned["bandwidth"][k]}
print(f"{m['cpu']}, {m['cores']} cores, {m['dotNet']}, {threads} threads, float32, median of {tuned['runs']} runs after "
      f"{tuned['warmup']} warm-ups. Bandwidth probed in the same run: read {bw[('read', threads)]:.1f} GB/s, "
      f"write {bw[('write', threads)]:.1f} GB/s.")
