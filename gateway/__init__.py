"""Podium: an OpenAI-compatible AI gateway and model router on asyncio."""

import os

# litellm reads this at import time; without it the import tries to download the price map.
# It is set here, before anything can import litellm, and never changed afterwards.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
