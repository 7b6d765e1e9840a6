"""Upstream providers behind one Protocol (`base`): the native OpenAI-compatible path
(`openai`) and litellm for everything else (`litellm`, the only module that imports it), with
the checks every upstream answer passes (`answer_shape`)."""
