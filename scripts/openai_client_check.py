#!/usr/bin/env python3
"""Drives a running Tandem router's HTTP API with the official `openai` Python
client (pip install openai), as users do: models, completions (whole, streamed,
batched, echo-scored), chat completions (whole, streamed with usage), and the errors the
client maps to its exception types, and structured output. Exits 0 when every check passes, 1 with the
failed checks listed, 2 when the `openai` package is missing.

    scripts/openai_client_check.py http://127.0.0.1:8000/v1
"""
import sys

try:
    import openai
except ImportError:
    print("openai_client_check: the `openai` package is not installed (pip install openai)")
    sys.exit(2)

failures = []


def check(name, cond, detail=""):
    print(("ok     " if cond else "FAILED ") + name + ("" if cond else f": {detail}"))
    if not cond:
        failures.append(name)


def main():
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    models = client.models.list()
    served = models.data[0].id
    check("models.list", len(models.data) == 1 and models.data[0].object == "model", models)

    whole = client.completions.create(model=served, prompt="The quick brown fox", max_tokens=8, temperature=0)
    check("completions.create", whole.object == "text_completion" and len(whole.choices) == 1
          and whole.usage.completion_tokens >= 1 and whole.choices[0].finish_reason in ("stop", "length"), whole)

    text = ""
    usage = None
    for chunk in client.completions.create(model=served, prompt="The quick brown fox", max_tokens=8, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    check("completions stream = whole", text == whole.choices[0].text, (text, whole.choices[0].text))
    check("completions stream usage", usage is not None and usage.completion_tokens == whole.usage.completion_tokens,
          usage)

    batch = client.completions.create(model=served, prompt=["one", "two"], max_tokens=4, temperature=0)
    check("completions batch", [c.index for c in batch.choices] == [0, 1], batch)

    chat = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi there"}],
                                          max_tokens=8, temperature=0)
    check("chat.completions.create", chat.object == "chat.completion" and chat.choices[0].message.role == "assistant",
          chat)
    streamed = ""
    roles = []
    for chunk in client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi there"}],
                                                max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            streamed += c.delta.content or ""
    check("chat stream = whole", streamed == chat.choices[0].message.content, (streamed, chat.choices[0].message.content))
    check("chat stream role first", roles == ["assistant"], roles)

    several = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi"}], n=2,
                                             max_tokens=4, temperature=0.9, seed=1)
    check("chat n=2", [c.index for c in several.choices] == [0, 1], several)
    # Log-probabilities, parsed by the client's own response models.
    lp = client.completions.create(model=served, prompt="The quick brown fox", max_tokens=6, temperature=0, logprobs=2)
    c = lp.choices[0].logprobs
    check("completions logprobs", c is not None and len(c.tokens) == lp.usage.completion_tokens
          and len(c.token_logprobs) == len(c.tokens) and all(x <= 0 for x in c.token_logprobs)
          and all(len(t) == 2 for t in c.top_logprobs) and c.text_offset[0] == 0, lp)
    # Loglikelihood scoring as lm-eval's local-completions asks for it: echo, logprobs, no new tokens.
    ll = client.completions.create(model=served, prompt="The quick brown fox", max_tokens=0, echo=True, logprobs=1)
    e = ll.choices[0].logprobs
    check("completions echo scoring", ll.choices[0].text == "The quick brown fox" and e is not None
          and len(e.tokens) == ll.usage.prompt_tokens and e.token_logprobs[0] is None
          and all(x <= 0 for x in e.token_logprobs[1:]) and ll.usage.completion_tokens == 0, ll)
    biased = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                            temperature=0, logit_bias={"100": 100}, frequency_penalty=0.5,
                                            presence_penalty=0.5, logprobs=True)
    toks = [t.token for t in biased.choices[0].logprobs.content]
    check("chat logit_bias and penalties", len(toks) == 3 and len(set(toks)) == 1, biased)
    clp = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi there"}],
                                         max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = clp.choices[0].logprobs.content if clp.choices[0].logprobs else None
    check("chat logprobs", content is not None and len(content) == clp.usage.completion_tokens
          and all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
                  and isinstance(t.bytes, list) for t in content)
          and all(t.top_logprobs[0].logprob == t.logprob for t in content), clp)
    streamed_lp = []
    for chunk in client.chat.completions.create(model=served, messages=[{"role": "user", "content": "Hi there"}],
                                                max_tokens=6, temperature=0, logprobs=True, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed_lp += [t.logprob for t in chunk.choices[0].logprobs.content]
    check("chat stream logprobs = whole", streamed_lp == [t.logprob for t in content or []], streamed_lp)
    # Structured output: the client's own json_schema response_format, and its parse() helper.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "rank": {"type": "integer"}},
              "required": ["city", "rank"], "additionalProperties": False}
    shaped = client.chat.completions.create(model=served, messages=[{"role": "user", "content": "A city as JSON"}],
                                            max_tokens=64, temperature=0,
                                            response_format={"type": "json_schema",
                                                             "json_schema": {"name": "city", "schema": schema,
                                                                             "strict": True}})
    import json as _json
    try:
        value = _json.loads(shaped.choices[0].message.content)
        ok = isinstance(value.get("city"), str) and isinstance(value.get("rank"), int)
    except ValueError:
        ok = False
    check("chat response_format json_schema", ok and shaped.choices[0].finish_reason == "stop", shaped)
    picked = client.completions.create(model=served, prompt="Yes or no?", max_tokens=4, temperature=1.0, seed=2,
                                       extra_body={"guided_choice": ["yes", "no"]})
    check("completions guided_choice (vLLM extra_body)", picked.choices[0].text in ("yes", "no"), picked)
    # Tool calling: a forced call comes back as the client's tool_calls; its
    # result goes back as a tool message with the call in the assistant turn.
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string",
                                                                                      "maxLength": 10}},
                                                              "required": ["city"]}}}]
    asked = [{"role": "user", "content": "Weather in Oslo?"}]
    called = client.chat.completions.create(model=served, messages=asked, tools=tools, max_tokens=150, temperature=0,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls = called.choices[0].message.tool_calls or []
    try:
        args = _json.loads(calls[0].function.arguments) if calls else {}
    except ValueError:
        args = {}
    check("chat tool_choice function gives tool_calls",
          len(calls) == 1 and calls[0].function.name == "get_weather" and isinstance(args.get("city"), str)
          and called.choices[0].finish_reason == "stop", called)  # OpenAI's finish for a call forced by name
    # Streamed: the client's own stream helper joins the call's pieces (its
    # arguments arrive piece by piece) into the same call.
    stream_helper = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    pieces = 0
    with stream_helper(model=served, messages=asked, tools=tools, max_tokens=150, temperature=0,
                       tool_choice={"type": "function", "function": {"name": "get_weather"}}) as events:
        for event in events:
            if event.type == "tool_calls.function.arguments.delta":
                pieces += 1
        final = events.get_final_completion()
    joined = final.choices[0].message.tool_calls or []
    check("chat streamed tool call joins to the whole one",
          len(joined) == 1 and len(calls) == 1 and joined[0].id.startswith("call_")
          and joined[0].function.name == "get_weather"
          and _json.loads(joined[0].function.arguments) == args and pieces > 1, (pieces, final))
    if calls:
        answered = client.chat.completions.create(
            model=served, tools=tools, max_tokens=4, temperature=0,
            messages=asked + [called.choices[0].message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": calls[0].id, "content": "3 C"}])
        check("chat with the tool's result", answered.choices[0].finish_reason in ("stop", "length"), answered)
    try:
        client.completions.create(model=served, prompt="x", logprobs=6)
        check("logprobs over 5 refused", False, "accepted")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        param = body.get("param", (body.get("error") or {}).get("param"))
        check("logprobs over 5 refused as BadRequestError naming it", e.status_code == 400 and param == "logprobs",
              e.body)
    try:
        client.completions.create(model="gpt-17", prompt="x")
        check("unknown model refused", False, "accepted")
    except openai.NotFoundError as e:
        check("unknown model is NotFoundError", e.status_code == 404, e)

    if failures:
        print(f"openai_client_check: {len(failures)} failed: {', '.join(failures)}")
        return 1
    print(f"openai_client_check: all passed (openai {openai.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
