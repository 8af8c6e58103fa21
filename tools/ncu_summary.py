#!/usr/bin/env python3
"""Summarizes an Nsight Compute CSV (ncu --csv --print-units base with the metrics gpu__time_duration.sum,
dram__bytes_read.sum and dram__bytes_write.sum), as tools/gpu-check.sh's profile phase writes it: per
kernel name (template arguments and parameters dropped), the launches, total time, share of the total,
DRAM bytes moved and the rate they were moved at. Usage: ncu_summary.py ncu.csv"""
import csv
import re
import sys
from collections import defaultdict


def short_name(name):
    name = name.replace("(anonymous namespace)", "")
    while "<" in name:  # template arguments, innermost first
        new = re.sub(r"<[^<>]*>", "", name)
        if new == name:
            break
        name = new
    name = re.sub(r"\(.*$", "", name)  # parameter list
    name = name.split("::")[-1].strip()
    return name.split()[-1] if name else "?"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rows = []
    with open(sys.argv[1], newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # ncu prints its own notes before the table
    launches = defaultdict(dict)  # ID -> metric -> value
    names = {}
    for r in csv.DictReader(lines):
        try:
            v = float(r["Metric Value"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        launches[r["ID"]][r["Metric Name"]] = v
        names[r["ID"]] = short_name(r["Kernel Name"])
    if not launches:
        print("profile: no kernels in the ncu report")
        return
    agg = defaultdict(lambda: [0, 0.0, 0.0])
    for i, m in launches.items():
        a = agg[names[i]]
        a[0] += 1
        a[1] += m.get("gpu__time_duration.sum", 0.0)
        a[2] += m.get("dram__bytes_read.sum", 0.0) + m.get("dram__bytes_write.sum", 0.0)
    total_t = sum(a[1] for a in agg.values())
    total_b = sum(a[2] for a in agg.values())
    print(f"profile: {len(launches)} kernels, {total_t / 1e6:.3f} ms of kernel time, "
          f"{total_b / 1e9:.2f} GB moved = {total_b / total_t:.0f} GB/s over kernel time")
    print(f"{'kernel':<36}{'launches':>9}{'ms':>9}{'share':>7}{'GB':>8}{'GB/s':>8}")
    for name, (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        rate = b / t if t > 0 else 0.0
        print(f"{name[:35]:<36}{n:>9}{t / 1e6:>9.3f}{t / total_t:>7.1%}{b / 1e9:>8.3f}{rate:>8.0f}")


if __name__ == "__main__":
    main()
