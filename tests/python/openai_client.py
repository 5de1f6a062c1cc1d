"""The official `openai` Python client, pointed at vramd's Unix socket or its TCP listener.

Usage: python3 openai_client.py (SOCKET | http://127.0.0.1:PORT/v1) MODEL
Prints one JSON line with what the non-streamed and the streamed calls returned.
"""
import json
import sys

import httpx
import openai

where, model = sys.argv[1], sys.argv[2]
if where.startswith("http"):
    client = openai.OpenAI(base_url=where, api_key="unused", max_retries=0)
else:
    client = openai.OpenAI(
        base_url="http://vramd/v1",
        api_key="unused",
        http_client=httpx.Client(transport=httpx.HTTPTransport(uds=where)),
        max_retries=0,
    )
messages = [{"role": "user", "content": "Hello"}]
full = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, seed=3)
chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, seed=3, stream=True))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
comp = client.completions.create(model=model, prompt="Once", max_tokens=4, temperature=0)
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    missing = None
except openai.NotFoundError as e:
    missing = e.status_code
print(json.dumps({
    "content": full.choices[0].message.content,
    "finish_reason": full.choices[0].finish_reason,
    "usage": full.usage.model_dump(),
    "streamed": streamed,
    "stream_finish": [c.choices[0].finish_reason for c in chunks if c.choices][-1],
    "completion_text": comp.choices[0].text,
    "missing_model_status": missing,
}))
