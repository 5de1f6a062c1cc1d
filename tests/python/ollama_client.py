"""The official `ollama` Python client, pointed at vramd (its Unix socket or its TCP port).

Usage: python3 ollama_client.py (unix:SOCKET | http://127.0.0.1:PORT) CHAT_MODEL EMBED_MODEL
Prints one JSON line with what each call returned, for tests/it/ollama.rs to check.
"""
import json
import math
import sys

import httpx
import ollama

where, chat_model, embed_model = sys.argv[1:4]
if where.startswith("unix:"):
    client = ollama.Client(host="http://vramd", transport=httpx.HTTPTransport(uds=where[len("unix:"):]))
else:
    client = ollama.Client(host=where)  # what OLLAMA_HOST=http://127.0.0.1:PORT gives

opts = {"temperature": 0, "seed": 3, "num_predict": 8}
msgs = [{"role": "user", "content": "Hello"}]

listed = client.list()
shown = client.show(chat_model)
full = client.chat(model=chat_model, messages=msgs, options=opts)
chunks = list(client.chat(model=chat_model, messages=msgs, options=opts, stream=True))
gen = client.generate(model=chat_model, prompt="Once upon a time", options=opts)
gen_chunks = list(client.generate(model=chat_model, prompt="Once upon a time", options=opts, stream=True))
schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ok"],
    "properties": {"ok": {"type": "boolean"}},
}
shaped = client.chat(
    model=chat_model, messages=msgs, format=schema, options={"temperature": 0, "seed": 1, "num_predict": 32}
)
ps = client.ps()
emb = client.embed(model=embed_model, input=["hello", "world"])
legacy = client.embeddings(model=embed_model, prompt="hello")
pulled = client.pull(chat_model)
try:
    client.chat(model="no-such-model", messages=msgs)
    missing = None
except ollama.ResponseError as e:
    missing = [e.status_code, e.error]
try:
    client.delete(chat_model)
    deleted = None
except ollama.ResponseError as e:
    deleted = [e.status_code, e.error]

print(json.dumps({
    "models": [m.model for m in listed.models],
    "family": listed.models[0].details.family,
    "show_arch": shown.modelinfo.get("general.architecture"),
    "show_caps": shown.capabilities,
    "content": full.message.content,
    "done_reason": full.done_reason,
    "eval_count": full.eval_count,
    "streamed": "".join(c.message.content or "" for c in chunks),
    "stream_done": chunks[-1].done,
    "stream_reason": chunks[-1].done_reason,
    "generated": gen.response,
    "gen_streamed": "".join(c.response or "" for c in gen_chunks),
    "json_ok": isinstance(json.loads(shaped.message.content).get("ok"), bool),
    "ps": [{"model": m.model, "size_vram": int(m.size_vram), "expires_at": m.expires_at.isoformat()} for m in ps.models],
    "embed_count": len(emb.embeddings),
    "embed_width": len(emb.embeddings[0]),
    "embed_norms": [math.sqrt(sum(x * x for x in e)) for e in emb.embeddings],
    "legacy_width": len(legacy.embedding),
    "pull": pulled.status,
    "missing": missing,
    "delete": deleted,
}))
