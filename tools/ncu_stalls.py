#!/usr/bin/env python3
"""Where a kernel's warps wait: reads an Nsight Compute raw CSV (ncu --csv --page raw --section
WarpStateStats --section SchedulerStats --section Occupancy --section SpeedOfLight ...), as tools/gpu-check.sh's
`stalls` phase writes it, and prints per profiled launch its time, issue utilization, occupancy, memory
throughput and the stall reasons that take the most cycles per issued instruction.
Usage: ncu_stalls.py raw.csv [label]"""
import csv
import sys

from ncu_summary import short_name

# Headline metrics (name fragment -> label); the first column whose name contains the fragment is shown.
HEADLINE = [
    ("gpu__time_duration.sum", "time us"),
    ("smsp__issue_active.avg.pct_of_peak_sustained_active", "issue active %"),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy %"),
    ("smsp__average_warp_latency_per_inst_issued.ratio", "cycles/inst"),
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "DRAM % of peak"),
    ("launch__registers_per_thread", "registers"),
    ("launch__occupancy_limit_registers", "blocks/SM by regs"),
    ("launch__occupancy_limit_shared_mem", "blocks/SM by smem"),
]


def num(s):
    try:
        return float(s.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    with open(sys.argv[1], newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        print(f"stalls {label}: no kernels in the ncu report")
        return
    head, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(head)}
    for r in data:
        name = short_name(r[col["Kernel Name"]]) if "Kernel Name" in col else "?"
        parts = []
        for frag, lab in HEADLINE:
            i = next((j for j, h in enumerate(head) if frag in h), None)
            v = num(r[i]) if i is not None and i < len(r) else None
            if v is None:
                continue
            if frag == "gpu__time_duration.sum":
                v = v / 1e3 if units[i] in ("ns", "nsecond") else v
            parts.append(f"{lab} {v:.3g}")
        print(f"stalls {label} {name}: " + ", ".join(parts))
        stalls = []
        for i, h in enumerate(head):
            # smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio (or the warp_latency
            # spelling of other ncu versions): cycles stalled for that reason per issued instruction.
            if "issue_stalled_" in h and h.endswith(".ratio") and "not_issued" not in h:
                v = num(r[i]) if i < len(r) else None
                if v:
                    reason = h.split("issue_stalled_")[-1].split(".")[0].replace("_per_issue_active", "")
                    stalls.append((v, reason))
        stalls.sort(reverse=True)
        if stalls:
            print("  stall cycles per issued instruction: " + ", ".join(f"{n} {v:.2f}" for v, n in stalls[:8]))


if __name__ == "__main__":
    main()
