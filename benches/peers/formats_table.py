"""The table of `formats.sh`'s JSON lines: per preset, thread count, engine and format, the
decode and prefill tokens/s of every repetition and their median, and for rwkv-burn its ratio to
each peer's matching format, pair by pair (the runs of one repetition ran one after another).

    python3 benches/peers/formats_table.py results.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

# rwkv-burn's format -> the peers' formats it is set against (the issue's pairing).
PEERS = {
    "f32": [("rwkv.cpp", "FP32"), ("llama.cpp", "f32")],
    "bf16": [("rwkv.cpp", "FP16"), ("llama.cpp", "f16")],
    "f16": [("rwkv.cpp", "FP16"), ("llama.cpp", "f16")],
    "q8": [("rwkv.cpp", "Q8_0"), ("llama.cpp", "q8_0")],
    "q4": [("rwkv.cpp", "Q4_0"), ("llama.cpp", "q4_0")],
}

runs = defaultdict(dict)  # (preset, threads, engine, format) -> rep -> record
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    runs[(r["preset"], r["threads"], r["engine"], r["format"])][r["rep"]] = r


def rates(key, field):
    return {rep: r.get(field) for rep, r in runs.get(key, {}).items() if r.get(field)}


def fmt(values):
    return " / ".join(f"{v:.1f}" for _, v in sorted(values.items())) or "-"


print("| preset | threads | engine | format | decode tok/s (per rep) | median | MB/token | GB/s | prefill tok/s (median) | decode ratio to peers (per rep) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for key in sorted(runs):
    preset, threads, engine, format_ = key
    decode = rates(key, "decode_tokens_per_s")
    prefill = rates(key, "prefill_tokens_per_s")
    median = statistics.median(decode.values()) if decode else 0
    mb = gbs = "-"
    any_run = next(iter(runs[key].values()))
    if "weight_bytes_per_token" in any_run:
        mb = f"{any_run['weight_bytes_per_token'] / 1e6:.0f}"
        gbs = f"{any_run['weight_bytes_per_token'] * median / 1e9:.1f}"
    ratios = []
    if engine == "rwkv-burn":
        for peer, peer_format in PEERS.get(format_, []):
            theirs = rates((preset, threads, peer, peer_format), "decode_tokens_per_s")
            pairs = [decode[r] / theirs[r] for r in sorted(decode) if r in theirs]
            if pairs:
                ratios.append(f"{peer} {peer_format}: " + " / ".join(f"{p:.2f}" for p in pairs))
    print(
        f"| {preset} | {threads} | {engine} | {format_} | {fmt(decode)} | {median:.1f} | {mb} | {gbs} "
        f"| {statistics.median(prefill.values()) if prefill else 0:.0f} | {'; '.join(ratios) or ''} |"
    )
