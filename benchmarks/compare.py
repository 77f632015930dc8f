#!/usr/bin/env python3
"""Turns t2_bench_gemm's JSON output into the markdown tables of benchmarks/README.md.

    t2_bench_gemm --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
        --benchmark_out=gemm.json --benchmark_out_format=json
    benchmarks/compare.py gemm.json

Benchmark names are <kernel>/<impl>/<threads>/<M>/<N>/<K>/real_time. Each row compares the
median of t2's repetitions with the median of OpenBLAS's at the same shape and thread count;
gemv rows also give t2's share of the measured read bandwidth (read_bandwidth/<threads>).
"""
import json
import sys
from collections import defaultdict


def medians(path):
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        # With repetitions, keep the median aggregate; without, the single run.
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        out[name] = b
    return out


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) == 2 else 2
    runs = medians(sys.argv[1])
    bandwidth = {name.split("/")[1]: b["bytes_per_second"] / 1e9
                 for name, b in runs.items() if name.startswith("read_bandwidth/")}
    rows = defaultdict(dict)
    for name, b in runs.items():
        parts = name.split("/")
        if len(parts) != 6:
            continue
        kernel, impl, threads, m, n, k = parts
        rows[(kernel, int(threads), int(m), int(n), int(k))][impl] = b
    for kernel in ("gemm", "gemm_xwt", "gemv"):
        keys = sorted(key for key in rows if key[0] == kernel)
        if not keys:
            continue
        extra = " | t2 GB/s | % of read bandwidth" if kernel == "gemv" else ""
        print(f"\n**{kernel}**\n")
        print(f"| threads | M | N | K | t2 GFLOP/s | OpenBLAS GFLOP/s | t2 / OpenBLAS{extra} |")
        print("|---|---|---|---|---|---|---" + ("|---|---" if extra else "") + "|")
        for key in keys:
            _, threads, m, n, k = key
            t2 = rows[key].get("t2")
            blas = rows[key].get("openblas")
            if t2 is None:
                continue
            t2_gflops = t2["GFLOP/s"] / 1e9
            blas_gflops = blas["GFLOP/s"] / 1e9 if blas else float("nan")
            line = (f"| {threads} | {m} | {n} | {k} | {t2_gflops:.1f} | {blas_gflops:.1f} | "
                    f"{t2_gflops / blas_gflops:.2f} |")
            if kernel == "gemv":
                gbs = t2["bytes_per_second"] / 1e9
                peak = bandwidth.get(str(threads), float("nan"))
                line += f" {gbs:.1f} | {100 * gbs / peak:.0f}% |"
            print(line)
    if bandwidth:
        print("\nread bandwidth (GB/s): " +
              ", ".join(f"{t} thread(s): {v:.1f}" for t, v in sorted(bandwidth.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
