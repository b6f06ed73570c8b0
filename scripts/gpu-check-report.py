#!/usr/bin/env python3
"""The JSON summary of one `scripts/gpu-check.sh run` (or dry run), from the files its steps
left in OUT; and, with --check, the test that a summary has every part and passed.

    gpu-check-report.py OUT CRITERION_DIR   prints the summary
    gpu-check-report.py --check SUMMARY     exit 1 unless it is complete and ok

Only the standard library: it runs on the GPU machine's Python and on this one's.
"""
import csv
import glob
import json
import os
import re
import statistics
import sys

# Where a check's device is named: "rwkv7/weights.safetensors on libtorch-cuda: logits_full".
DEVICE_IN_CHECK = re.compile(r" on ([A-Za-z0-9:_-]+): ")


def steps(out):
    rows = []
    with open(os.path.join(out, "steps.tsv")) as f:
        for line in f:
            name, rc, seconds = line.rstrip("\n").split("\t")
            status = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped"}.get(
                rc, "failed"
            )
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "rc": None if rc == "skipped" else int(rc),
                    "seconds": int(seconds),
                }
            )
    return rows


def parity(out):
    """Per device: how many checks, how many failed, and the worst error (1 = the tolerance)."""
    devices, failures = {}, []
    path = os.path.join(out, "parity.jsonl")
    if not os.path.exists(path):
        return devices, failures
    with open(path) as f:
        for line in f:
            c = json.loads(line)
            m = DEVICE_IN_CHECK.search(c["check"])
            device = m.group(1) if m else c["check"].split(" ")[0]
            d = devices.setdefault(
                device, {"checks": 0, "failures": 0, "worst_of_tolerance": 0.0, "worst_check": None}
            )
            d["checks"] += 1
            worst = c["of_tolerance"]
            if not c["ok"]:
                d["failures"] += 1
                failures.append(c)
            # NaN was written as null: it is the worst there is.
            if worst is None or (d["worst_of_tolerance"] is not None and worst > d["worst_of_tolerance"]):
                d["worst_of_tolerance"], d["worst_check"] = worst, c["check"]
    return devices, failures[:20]


def wkv(criterion):
    """Kernel against reference body, per device, operator, mode and length (milliseconds)."""
    times = {}
    for bench in glob.glob(os.path.join(criterion, "**", "new", "benchmark.json"), recursive=True):
        with open(bench) as f:
            b = json.load(f)
        with open(os.path.join(os.path.dirname(bench), "estimates.json")) as f:
            mean_ms = json.load(f)["mean"]["point_estimate"] / 1e6
        # function_id: "<device>/<op>_<mode>/<kernel|reference>", value_str: the length.
        parts = (b.get("function_id") or "").split("/")
        if len(parts) != 3:
            continue
        device, op_mode, body = parts
        op, _, mode = op_mode.partition("_")
        key = (device, op, mode, int(b["value_str"]))
        times.setdefault(key, {})[body] = mean_ms
    rows = []
    for (device, op, mode, length), t in sorted(times.items()):
        k, r = t.get("kernel"), t.get("reference")
        rows.append(
            {
                "device": device,
                "op": op,
                "mode": mode,
                "length": length,
                "kernel_ms": k,
                "reference_ms": r,
                "speedup": r / k if k and r else None,
            }
        )
    return rows


def bench(out, prefix):
    found = {}
    for path in sorted(glob.glob(os.path.join(out, prefix + "-*.json"))):
        key = os.path.basename(path)[len(prefix) + 1 : -len(".json")]
        try:
            with open(path) as f:
                found[key] = json.load(f)
        except (OSError, ValueError) as e:
            found[key] = {"error": str(e)}
    return found


def train(out):
    found = {}
    for path in sorted(glob.glob(os.path.join(out, "train-*.csv"))):
        ctx = os.path.basename(path)[len("train-") : -len(".csv")]
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("tokens_per_s")]
        # The first step carries the kernels' compilation and the allocator's warm-up.
        speeds = [float(r["tokens_per_s"]) for r in rows[1:]] or [float(r["tokens_per_s"]) for r in rows]
        found[ctx] = {
            "steps": len(rows),
            "tokens_per_s_median": statistics.median(speeds) if speeds else None,
        }
    return found


def summary(out, criterion):
    s = steps(out)
    devices, failures = parity(out)
    with open(os.path.join(out, "machine.txt")) as f:
        machine = [line.rstrip("\n") for line in f]
    report = {
        "machine": machine,
        "steps": s,
        "parity": devices,
        "parity_failures": failures,
        "wkv": wkv(criterion),
        "bench": bench(out, "bench"),
        "train": train(out),
        "cpu_decode": {
            k: v.get("decode_tokens_per_s") for k, v in bench(out, "cpu").items()
        },
    }
    report["ok"] = all(x["status"] == "ok" for x in s) and not failures and bool(devices)
    return report


def check(path):
    """A dry run's summary must have run every step, compared on its device and timed each part."""
    with open(path) as f:
        r = json.load(f)
    problems = []
    names = [x["name"] for x in r["steps"]]
    for want in ["grads", "backward", "wkv"]:
        if want not in names:
            problems.append("no step " + want)
    for prefix in ["parity ", "bench ", "train ", "cpu "]:
        if not any(n.startswith(prefix) for n in names):
            problems.append("no " + prefix.strip() + " step")
    problems += [x["name"] + ": " + x["status"] for x in r["steps"] if x["status"] != "ok"]
    if not r["parity"]:
        problems.append("no parity checks were logged")
    problems += ["parity: " + c["check"] for c in r["parity_failures"]]
    if not any(w["kernel_ms"] and w["reference_ms"] for w in r["wkv"]):
        problems.append("no WKV timing pairs")
    if not r["bench"] or any("decode_tokens_per_s" not in b for b in r["bench"].values()):
        problems.append("bench results missing")
    if not r["train"] or any(t["tokens_per_s_median"] is None for t in r["train"].values()):
        problems.append("training speed missing")
    if not r["cpu_decode"] or None in r["cpu_decode"].values():
        problems.append("CPU decode speeds missing")
    if not r["ok"]:
        problems.append("not ok")
    for p in problems:
        print("gpu-check: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    json.dump(summary(sys.argv[1], sys.argv[2]), sys.stdout, indent=1)
    print()
