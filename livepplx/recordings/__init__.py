"""Real streams captured with ``curl -N`` from llama.cpp servers running Gemma 3 270M.

They ship with the package so ``livepplx demo`` and the tests need no server and no network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RECORDINGS", "recording_path"]

#: name -> what it is
RECORDINGS = {
    "llamacpp-python-chat": "llama-cpp-python server, /v1/chat/completions, top_logprobs 5",
    "llamacpp-python-completions": "llama-cpp-python server, /v1/completions, logprobs 5",
    "llamacpp-server-chat": "upstream llama-server, /v1/chat/completions, top_logprobs 3",
    "llamacpp-server-native": "upstream llama-server, native /completion, n_probs 3",
}


def recording_path(name: str) -> Path:
    """The path of a shipped recording, by name (see :data:`RECORDINGS`)."""
    if name not in RECORDINGS:
        raise KeyError(f"no recording named {name!r}; choose one of: {', '.join(RECORDINGS)}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.sse")))
