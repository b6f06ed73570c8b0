"""Drives `rwkv serve` with the official `openai` package, as a user's program would.

Run by tests/suite/serve.rs with the server's base URL: python openai_client.py URL.
Exits non-zero (with the assertion) if any answer is not what the API promises.
"""

import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base + "/v1", api_key="test-key", max_retries=0)

models = client.models.list()
ids = [m.id for m in models.data]
assert ids == ["rwkv-embedded"], ids

# Completions, whole and streamed: the same seed gives the same text.
whole = client.completions.create(
    model="rwkv-embedded", prompt="The quick brown", max_tokens=12, temperature=0.8, seed=5
)
text = whole.choices[0].text
assert whole.object == "text_completion", whole
assert whole.choices[0].finish_reason == "length", whole
assert whole.usage.completion_tokens == 12, whole.usage
assert whole.usage.prompt_tokens == len(b"The quick brown"), whole.usage
assert len(text) > 0

streamed = client.completions.create(
    model="rwkv-embedded",
    prompt="The quick brown",
    max_tokens=12,
    temperature=0.8,
    seed=5,
    stream=True,
)
pieces = []
reasons = []
for chunk in streamed:
    pieces.append(chunk.choices[0].text)
    reasons.append(chunk.choices[0].finish_reason)
assert "".join(pieces) == text, (pieces, text)
assert reasons[-1] == "length", reasons

# Stop strings end the text before them.
stopped = client.completions.create(
    model="rwkv-embedded", prompt="The quick brown", max_tokens=12, temperature=0.8, seed=5,
    stop=[text[3:5]],
)
assert stopped.choices[0].finish_reason == "stop", stopped
assert stopped.choices[0].text == text[: text.index(text[3:5])], (stopped, text)

# Chat, whole and streamed.
messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]
chat = client.chat.completions.create(
    model="rwkv-embedded", messages=messages, max_tokens=16, temperature=0, seed=1
)
assert chat.object == "chat.completion", chat
answer = chat.choices[0].message.content
assert chat.choices[0].message.role == "assistant", chat
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

stream = client.chat.completions.create(
    model="rwkv-embedded",
    messages=messages,
    max_tokens=16,
    temperature=0,
    seed=1,
    stream=True,
    stream_options={"include_usage": True},
)
content = []
usage = None
finish = None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            content.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert "".join(content) == answer, (content, answer)
assert finish == chat.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

# Several choices: choice i is what the same request alone gives with seed + i.
many = client.completions.create(
    model="rwkv-embedded", prompt="The quick brown", max_tokens=12, temperature=0.8, seed=5, n=3
)
assert [c.index for c in many.choices] == [0, 1, 2], many
assert many.choices[0].text == text, (many, text)
for i in (1, 2):
    alone = client.completions.create(
        model="rwkv-embedded", prompt="The quick brown", max_tokens=12, temperature=0.8,
        seed=5 + i,
    )
    assert many.choices[i].text == alone.choices[0].text, (i, many, alone)
assert many.usage.completion_tokens == 36, many.usage
streamed = client.chat.completions.create(
    model="rwkv-embedded", messages=messages, max_tokens=8, temperature=1.0, seed=3, n=2,
    stream=True,
)
parts = {0: [], 1: []}
finished = set()
for chunk in streamed:
    for choice in chunk.choices:
        if choice.delta.content:
            parts[choice.index].append(choice.delta.content)
        if choice.finish_reason:
            finished.add(choice.index)
assert finished == {0, 1}, finished
whole_two = client.chat.completions.create(
    model="rwkv-embedded", messages=messages, max_tokens=8, temperature=1.0, seed=3, n=2
)
for c in whole_two.choices:
    assert "".join(parts[c.index]) == c.message.content, (parts, whole_two)

# Errors arrive as the package's typed exceptions, with the field named.
try:
    client.completions.create(model="rwkv-embedded", prompt="x", max_tokens=0)
    raise AssertionError("max_tokens=0 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    assert e.body["param"] == "max_tokens", e.body

try:
    client.chat.completions.create(model="rwkv-embedded", messages=[])
    raise AssertionError("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "messages", e.body

print("openai client: ok")
