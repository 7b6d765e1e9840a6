"""Translation between the APIs clients speak and the Chat Completions the pipeline speaks.

The pipeline takes an OpenAI chat body and answers with a `chat.completion` dict, or a stream of
`chat.completion.chunk` dicts. Each front door other than Chat Completions is a pure
translation around it, with no I/O:

    request model  ──(to chat body)──▶  pipeline  ──(completion)──▶  API's answer object
                                                  ──(chunks)────▶  stream translator ─▶ events

- `responses`: the OpenAI Responses API (`POST /v1/responses`), with conversation items for
  `previous_response_id` as plain JSON-ready data the caller stores and loads.
- `anthropic`: the Anthropic Messages API (`POST /v1/messages`, `count_tokens`), and errors in
  Anthropic's shape.
- `sse`: named server-sent events, as both APIs stream them.
"""
