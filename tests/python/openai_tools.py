"""The official `openai` Python client: a forced tool call and structured output.

Usage: python3 openai_tools.py (--uds SOCKET | --url BASE_URL) MODEL
Prints one JSON line with what the client parsed; the Rust test checks it against the
schemas. Over --url it is exactly how Open WebUI and other apps reach vramd's loopback TCP
listener.
"""
import json
import sys

import httpx
import openai

kind, where, model = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "--uds":
    client = openai.OpenAI(base_url="http://vramd/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(transport=httpx.HTTPTransport(uds=where)))
else:
    client = openai.OpenAI(base_url=where, api_key="unused", max_retries=0)

weather = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "additionalProperties": False,
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"]}}}
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
forced = client.chat.completions.create(
    model=model, messages=messages, tools=[weather], temperature=0,
    tool_choice={"type": "function", "function": {"name": "get_weather"}})
call = forced.choices[0].message.tool_calls[0]

streamed_args, streamed_name = "", None
for chunk in client.chat.completions.create(
        model=model, messages=messages, tools=[weather], temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}):
    if chunk.choices and chunk.choices[0].delta.tool_calls:
        for tc in chunk.choices[0].delta.tool_calls:
            streamed_name = tc.function.name or streamed_name
            streamed_args += tc.function.arguments or ""

# The call and its answer go back into the history, as an agent loop does.
history = messages + [forced.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
follow_up = client.chat.completions.create(model=model, messages=history, tools=[weather], max_tokens=8, temperature=0)

schema = {"type": "object", "additionalProperties": False,
          "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                         "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["answer", "confidence"]}
structured = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Is Paris in France?"}], temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": schema}})

print(json.dumps({
    "finish_reason": forced.choices[0].finish_reason,
    "name": call.function.name,
    "arguments": json.loads(call.function.arguments),
    "streamed_name": streamed_name,
    "streamed_arguments": json.loads(streamed_args),
    "follow_up_role": follow_up.choices[0].message.role,
    "structured": json.loads(structured.choices[0].message.content),
}))
