"""The official `openai` Python package against `distill serve`.

Usage: python3 openai_client.py BASE_URL KEY LIMITED_KEY
Exits non-zero (an AssertionError with the reason) when anything differs from what the
OpenAI wire format promises; prints "ok" otherwise.
"""
import sys

import openai

base_url, key, limited_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == ["tiny"], models

messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "hello there"}]
whole = client.chat.completions.create(
    model="tiny", messages=messages, max_tokens=16, n=2, seed=5, temperature=0.8, logprobs=True, top_logprobs=3
)
assert whole.object == "chat.completion" and len(whole.choices) == 2, whole
for choice in whole.choices:
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    tokens = choice.logprobs.content
    assert all(len(t.top_logprobs) == 3 for t in tokens)
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in tokens) == choice.message.content or any(
        b > 127 for t in tokens for b in t.bytes
    )
assert whole.usage.completion_tokens == sum(len(c.logprobs.content) for c in whole.choices), whole.usage
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

texts, finish, usage = ["", ""], [None, None], None
stream = client.chat.completions.create(
    model="tiny", messages=messages, max_tokens=16, n=2, seed=5, temperature=0.8, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    assert chunk.object == "chat.completion.chunk"
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        texts[c.index] += c.delta.content or ""
        finish[c.index] = c.finish_reason or finish[c.index]
assert texts == [c.message.content for c in whole.choices], (texts, whole.choices)
assert finish == [c.finish_reason for c in whole.choices]
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage

legacy = client.completions.create(model="tiny", prompt="the hello", max_tokens=6, logprobs=2, temperature=0)
assert legacy.object == "text_completion"
lp = legacy.choices[0].logprobs
assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and lp.text_offset[0] == 0
assert "".join(lp.tokens) == legacy.choices[0].text

pieces = [c.choices[0].text for c in client.completions.create(
    model="tiny", prompt="the hello", max_tokens=6, temperature=0, stream=True) if c.choices]
assert "".join(pieces) == legacy.choices[0].text, pieces

stored = client.chat.completions.create(
    model="tiny", messages=messages, max_tokens=4, store=True, metadata={"team": "support"}
)
assert stored.id.startswith("chatcmpl-")


def refused(error_type, param, **kwargs):
    request = dict(model="tiny", messages=messages, max_tokens=4)
    request.update(kwargs)
    try:
        client.chat.completions.create(**request)
    except error_type as e:
        if param is not None:
            assert e.body["param"] == param, e.body
            assert param in e.body["message"], e.body
        return
    raise AssertionError(f"{kwargs} was not refused with {error_type.__name__}")


refused(openai.BadRequestError, "n", n=-1)
refused(openai.BadRequestError, "top_logprobs", logprobs=True, top_logprobs=25)
refused(openai.BadRequestError, "max_tokens", max_tokens=10**6)
refused(openai.BadRequestError, "stop", stop=[""])
refused(openai.NotFoundError, "model", model="gpt-4o")

try:
    openai.OpenAI(base_url=f"{base_url}/v1", api_key="dk-wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

limited = openai.OpenAI(base_url=f"{base_url}/v1", api_key=limited_key, max_retries=0)
limited.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
try:
    limited.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    raise AssertionError("the second request of a 1 request/min key was served")
except openai.RateLimitError as e:
    assert int(e.response.headers["retry-after"]) >= 1, e.response.headers

print("ok")
