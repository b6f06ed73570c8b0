"""Load on a running `rwkv serve`: aggregate generated tokens/s and time to first token at
several numbers of concurrent streams, and the time to first token of a long conversation's
next turn with and without its prefix state cached.

    python benches/serve.py --url http://127.0.0.1:8000 [--streams 1,4,16,64]

Driven by benches/serve.sh, which starts the servers. Needs httpx2 (installed with openai by
scripts/setup.sh --tests). Prints one JSON object per measurement.
"""

import argparse
import asyncio
import json
import random
import statistics
import time

import httpx2 as httpx  # the HTTP client openai 3.60 is built on

WORDS = (
    "the of and to in is was that for on with as by at from his her they this which be not "
    "are had have one all were we when there can an so said what their if would into has more "
    "time water river mountain city people light house garden winter summer morning evening"
).split()


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def stream(client, url, body):
    """One streamed request: (seconds to the first generated text, completion tokens)."""
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                piece = choice.get("text") or choice.get("delta", {}).get("content")
                if piece and first is None:
                    first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start, tokens


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def concurrency(client, base, streams, prompt_words, max_tokens, seed):
    rng = random.Random(seed)
    bodies = [
        {
            "prompt": text(rng, prompt_words),
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": seed + i,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(streams)
    ]
    start = time.perf_counter()
    results = await asyncio.gather(
        *(stream(client, base + "/v1/completions", b) for b in bodies)
    )
    wall = time.perf_counter() - start
    ttft = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {
        "streams": streams,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": round(percentile(ttft, 50), 3),
        "ttft_p99_s": round(percentile(ttft, 99), 3),
    }


async def conversation_ttft(client, base, words, seed):
    """TTFT of a fresh long conversation (uncached) and of its next turn (cached prefix)."""
    rng = random.Random(seed)
    messages = []
    while sum(len(m["content"].split()) for m in messages) < words:
        messages.append({"role": "user", "content": text(rng, 120)})
        messages.append({"role": "assistant", "content": text(rng, 120)})
    messages.append({"role": "user", "content": text(rng, 20)})
    body = {"messages": messages, "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    uncached, _ = await stream(client, base + "/v1/chat/completions", body)
    follow = dict(body)
    follow["messages"] = messages + [
        {"role": "assistant", "content": text(rng, 10)},
        {"role": "user", "content": text(rng, 10)},
    ]
    cached, _ = await stream(client, base + "/v1/chat/completions", follow)
    return uncached, cached


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", default="1,4,16,64")
    parser.add_argument("--prompt-words", type=int, default=48,
                        help="48: about 64 World tokens; 12: about 64 bytes")
    parser.add_argument("--max-tokens", default="64,256",
                        help="tokens generated per stream; each value is a run of its own")
    parser.add_argument("--conversation-words", type=int, default=1500,
                        help="about 2,000 World tokens")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        # Warm up: the first request pays for lazy set-up in the server.
        await concurrency(client, args.url, 1, args.prompt_words, 4, 99)
        for max_tokens in [int(m) for m in args.max_tokens.split(",")]:
            for n in [int(s) for s in args.streams.split(",")]:
                # Seeds differ per run, so no run's prompts are cached by an earlier one.
                result = await concurrency(
                    client, args.url, n, args.prompt_words, max_tokens, n * 1000 + max_tokens
                )
                print(json.dumps({"label": args.label, "max_tokens": max_tokens, **result}),
                      flush=True)
        if args.conversation_words > 0:
            pairs = [await conversation_ttft(client, args.url, args.conversation_words, s)
                     for s in range(3)]
            uncached = statistics.median(p[0] for p in pairs)
            cached = statistics.median(p[1] for p in pairs)
            print(json.dumps({
                "label": args.label,
                "conversation_words": args.conversation_words,
                "ttft_uncached_s": round(uncached, 3),
                "ttft_cached_s": round(cached, 3),
                "speedup": round(uncached / cached, 1),
            }), flush=True)


asyncio.run(main())
