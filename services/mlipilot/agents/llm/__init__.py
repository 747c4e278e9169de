"""The LLM agent: a model behind an OpenAI-compatible API (vLLM, llama.cpp) proposes patches.

``LlmAgent`` talks to the server through ``ChatClient``; ``tools`` and ``state_view`` decide
what the model may read (compact text from ``CampaignState`` only: no paths, no test data).
"""

from mlipilot.agents.llm.agent import LlmAgent, LlmSettings, api_key_from_env
from mlipilot.agents.llm.client import ChatClient, LlmServerError

__all__ = ["ChatClient", "LlmAgent", "LlmServerError", "LlmSettings", "api_key_from_env"]
