#!/usr/bin/env python3
"""Time to first token across the turns of one conversation, through vramd and the real
llama.cpp worker on SmolLM2-135M (scripts/fetch-smollm), and after a soft unload.

Usage: benches/chat_turns.py [--target-dir DIR] [--turns 8] [--new-tokens 150] [--threads 2]

Starts its own daemon (binaries from DIR/debug, default target/ or $CARGO_TARGET_DIR) on a
temporary socket, plays a conversation of --turns user messages with --new-tokens greedy
tokens each (streamed), and prints a Markdown table: per turn the prompt tokens, how many
came from the prompt cache (the worker's own count), and the time to first token. Then it
soft-unloads the model (what vramd does to make room for an image), sends the next turn and
reports the same figures, with and without the KV kept in host memory (`kv_ram`).
"""
import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

QUESTIONS = [
    "Tell me about the history of Paris.", "What about its museums?", "Which one is the oldest?",
    "And the most visited?", "How do I get there by train?", "What should I eat nearby?",
    "Is it expensive?", "Summarise our conversation.", "One more tip?", "Thanks!",
]


def request(sock_path, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: v\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    return s


def stream_chat(sock_path, messages, new_tokens):
    """Returns (answer, ttft seconds, usage)."""
    t0 = time.monotonic()
    s = request(sock_path, "POST", "/v1/chat/completions",
                {"model": "smol", "messages": messages, "max_tokens": new_tokens,
                 "temperature": 0, "stream": True})
    buf, ttft, text, usage = b"", None, "", None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            line = event.split(b"data: ", 1)[-1]
            if line.strip() == b"[DONE]" or not line.startswith(b"{"):
                continue
            v = json.loads(line)
            content = (v.get("choices") or [{}])[0].get("delta", {}).get("content")
            if content and ttft is None:
                ttft = time.monotonic() - t0
            text += content or ""
            usage = v.get("usage") or usage
    return text, ttft, usage


def start(bin_dir, model, threads, kv_ram, tmp):
    sock_path = os.path.join(tmp, "vramd.sock")
    cfg = os.path.join(tmp, "vramd.toml")
    pathlib.Path(cfg).write_text(
        f'[daemon]\nidle_exit = "0"\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"\n'
        f'worker_dir = "{bin_dir}"\n[dbus]\nbus = "none"\n[memory]\nbackend = "budget"\nbudget = "8GiB"\n'
        f'[[models]]\nname = "smol"\nkind = "llm"\npath = "{model}"\ncontext_length = 4096\n'
        f'threads = {threads}\nkv_ram = "{kv_ram}"\n')
    proc = subprocess.Popen([os.path.join(bin_dir, "vramd"), "--config", cfg, "--socket", sock_path],
                            stderr=open(os.path.join(tmp, "vramd.log"), "w"))
    for _ in range(200):
        if os.path.exists(sock_path):
            try:
                request(sock_path, "GET", "/health").recv(1)
                return proc, sock_path
            except OSError:
                pass
        time.sleep(0.05)
    sys.exit("vramd did not start; see " + tmp)


def conversation(sock_path, turns, new_tokens):
    messages, rows = [], []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
        text, ttft, usage = stream_chat(sock_path, messages, new_tokens)
        messages.append({"role": "assistant", "content": text})
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        rows.append((f"turn {i + 1}", usage["prompt_tokens"], cached, ttft))
    return messages, rows


def after_soft_unload(sock_path, messages, new_tokens, label):
    request(sock_path, "POST", "/v1/models/smol/unload", {"mode": "soft"}).recv(65536)
    messages = messages + [{"role": "user", "content": "One last question?"}]
    _, ttft, usage = stream_chat(sock_path, messages, new_tokens)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return (label, usage["prompt_tokens"], cached, ttft)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", "target"))
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    bin_dir = os.path.abspath(os.path.join(args.target_dir, "debug"))
    model = os.environ.get("VRAMD_SMOLLM", os.path.expanduser("~/.cache/vramd/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not os.path.isfile(model):
        sys.exit(f"{model} not found: run scripts/fetch-smollm")
    rows = []
    for kv_ram, label in [("1GiB", "next turn after a soft unload, KV kept in RAM"),
                          ("0", "next turn after a soft unload, nothing kept")]:
        with tempfile.TemporaryDirectory() as tmp:
            proc, sock_path = start(bin_dir, model, args.threads, kv_ram, tmp)
            try:
                messages, turn_rows = conversation(sock_path, args.turns, args.new_tokens)
                if not rows:
                    rows += turn_rows
                rows.append(after_soft_unload(sock_path, messages, args.new_tokens, label))
            finally:
                proc.terminate()
                proc.wait()
    print(f"SmolLM2-135M, {args.threads} threads, {args.new_tokens} new tokens per turn, greedy, streamed\n")
    print("| request | prompt tokens | from the prompt cache | time to first token |")
    print("| --- | ---: | ---: | ---: |")
    for name, prompt, cached, ttft in rows:
        print(f"| {name} | {prompt} | {cached} | {ttft * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
