"""Wire formats: one parser per format, chunk -> :class:`Parsed`.

A chunk is a decoded JSON value (a ``dict``) or an openai SDK object of the same
shape; attributes and keys are read alike, so nothing here imports openai. A whole
non-streamed response is read by the same parsers as one big chunk
(:func:`livepplx.score`). Where each server puts its logprobs:
``shared/guide/wire-formats.md``.

**The type rule.** Every parser reads fields through the same few accessors, so one
rule holds for every format at every depth, and nothing in a chunk raises:

* A field whose value has the wrong type reads as absent. A token text that is not
  a string is ``""`` (the token still counts); alternatives that are not a list list
  nothing; an end mark of the wrong type marks nothing; a logprob that is not a
  number is skipped by the value policy (:mod:`livepplx.core.tokens`).
* A value on the way to the tokens that cannot be read (a chunk, choice or token
  entry that is not an object; a list of them that is not a list; a choice index
  that is not a non-negative integer: ``true``, ``"1"``, ``[1]``, ``-1``, ``1.0``) is
  not a token: it is counted in :attr:`Parsed.malformed`, the rest of the chunk is
  still read, and it is never merged into choice 0.

>>> chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"},
...          "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "top_logprobs": []}]}}]}
>>> detect_format(chunk)
'openai-chat'
>>> parse_chunk(chunk).tokens
[Token(choice=0, text='Hi', logprob=-0.25, status=OK, alternatives=())]
>>> parse_chunk({"choices": [{"index": "1", "delta": {"content": "x"}, "finish_reason": "stop"}]}, "openai-chat")
Parsed(tokens=[], unscored=0, error=None, ended=(), malformed=1)
"""

from __future__ import annotations

import reprlib
from operator import attrgetter
from typing import Annotated, Any, Callable, NamedTuple

import msgspec

from .tokens import CENSORED_AT_OR_BELOW, OK, Token, make_token

__all__ = ["Parsed", "FORMATS", "detect_format", "parse_chunk", "error_message"]


class Parsed(NamedTuple):
    """What one chunk carried."""

    #: the tokens, with the value policy applied
    tokens: list[Token]
    #: pieces of generated text that came with no logprobs (an endpoint that ignores them)
    unscored: int = 0
    #: the message of a mid-stream error event, else None
    error: str | None = None
    #: the choice indexes this chunk marked finished by its format's own end mark
    #: (``finish_reason``, ``response.completed``, ``"stop": true``, ``"done": true``,
    #: TGI's ``details``, Gemini's ``finishReason``)
    ended: tuple[int, ...] = ()
    #: values on the way to the tokens that could not be read (see the type rule above)
    malformed: int = 0


Getter = Callable[[Any, str, Any], Any]
_DICT_GET: Getter = dict.get

# JSON scalars and arrays have no fields. Reading one by attribute would be wrong, not
# just empty: getattr([], "index") is a list method.
_NO_FIELDS = (str, bytes, bytearray, int, float, list, tuple, type(None))
# The reader of each type seen, so an SDK object costs one lookup (bounded: classes made
# on the fly are not remembered past a thousand).
_READERS: dict[type, Getter | None] = dict.fromkeys((*_NO_FIELDS, bool))
_UNSEEN: Any = object()


def _reader(obj: Any) -> Getter | None:
    """How to read fields of ``obj``: ``dict.get`` or ``getattr`` (called ``get(obj, name,
    None)``, both C builtins), or None when ``obj`` is not an object at all.

    SDK objects are read by attribute; they may hold plain dicts in fields they do not
    declare (llama-server's ``logprobs.content`` in a ``Completion``), so every object
    down the tree picks its own reader.
    """
    kind = type(obj)
    if kind is dict:
        return _DICT_GET
    get = _READERS.get(kind, _UNSEEN)
    if get is not _UNSEEN:
        return get
    get = _DICT_GET if issubclass(kind, dict) else None if issubclass(kind, _NO_FIELDS) else getattr
    if len(_READERS) < 1000:
        _READERS[kind] = get
    return get


def _field(obj: Any, name: str) -> Any:
    """One field of anything: None when absent or when ``obj`` has no fields."""
    get = _reader(obj)
    return get(obj, name, None) if get is not None else None


def _as_list(value: Any) -> list[Any] | tuple[Any, ...] | None:
    """A field that holds a list: the list, ``()`` when absent, None when of another type."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return value
    return None


def _none(value: Any) -> bool:
    """Absent or empty: null or ``[]`` (any other value is read, and may be malformed)."""
    return value is None or (not value and isinstance(value, (list, tuple)))


def _index(value: Any, default: int) -> int | None:
    """A choice index: ``default`` when absent, None (malformed) unless a non-negative int."""
    if value is None:
        return default
    if type(value) is int and value >= 0:  # type() excludes bool
        return value
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _alternatives(tops: Any, key: str) -> list[Any] | tuple[()]:
    """The raw values of listed alternatives (the value policy cleans them)."""
    if type(tops) is not list and not isinstance(tops, (list, tuple)):
        return ()  # absent, or a wrong type: nothing listed
    return [a.get(key) if type(a) is dict else _field(a, key) for a in tops]


def _short(value: Any) -> str:
    """A bounded repr: a server's error object can be anything, of any size or depth."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int past str()'s digit limit
        return f"<{type(value).__name__}>"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 200, 200


def error_message(chunk: Any) -> str | None:
    """The message of an error event (``{"error": ...}`` in any server's shape), else None.

    A truthy ``error`` field is an error; its ``message`` is the message when it has one.
    """
    get = _reader(chunk)
    if get is None:
        return None
    err = get(chunk, "error", None)
    if not err:
        if get(chunk, "type", None) == "error":  # the Responses API's error event
            message = get(chunk, "message", None) or get(chunk, "code", None)
            return _message(message) if message else "error event"
        return None
    if isinstance(err, str):
        return err
    message = _field(err, "message")
    return _message(message) if message else _short(err)


def _message(message: Any) -> str:
    return message if isinstance(message, str) else _short(message)


def _dict_error(chunk: Any) -> str | None:
    # The openai SDK raises on error chunks itself: only decoded dicts can carry one here.
    return error_message(chunk) if type(chunk) is dict else None


def _not_an_object() -> Parsed:
    return Parsed([], 0, None, (), 1)


def _entry_token(index: int, e: Any, get: Getter) -> Token:
    """One ``{token, logprob, top_logprobs: [{logprob}]}`` entry (chat, responses, ollama)."""
    tops = get(e, "top_logprobs", None)
    text = get(e, "token", None)
    return make_token(
        index,
        text if type(text) is str else _text(text),
        get(e, "logprob", None),
        # The common cases inline (this runs for every listed alternative): dicts, or SDK
        # objects ("logprob" names no method of a JSON scalar or array, so getattr is safe
        # on whatever else comes).
        [a.get("logprob") if type(a) is dict else getattr(a, "logprob", None) for a in tops]
        if type(tops) is list
        else _alternatives(tops, "logprob") if tops else (),
    )


def _entries(index: int, entries: Any, tokens: list[Token]) -> int:
    """Append the tokens of a list of entries; return how many were malformed."""
    if type(entries) is not list:
        entries = _as_list(entries)
        if entries is None:
            return 1
    malformed = 0
    for e in entries:
        get = _DICT_GET if type(e) is dict else _reader(e)
        if get is None:
            malformed += 1
        else:
            tokens.append(_entry_token(index, e, get))
    return malformed


def _has_text(part: Any) -> bool:
    get = _reader(part)
    if get is None:
        return False
    for key in ("content", "refusal", "reasoning_content", "reasoning"):
        value = get(part, key, None)
        if value and isinstance(value, str):
            return True
    return False


# -- Fast paths: the common shape, read by attribute ---------------------------------------
#
# An openai SDK object and a typed struct (below) are read by attribute. When a chunk has
# the common shape of its format (entries with a string token and a list of alternatives,
# an integer index, a string or null end mark), these read it with plain attribute access
# and no reader lookups; anything else (an odd type anywhere, no tokens, a refusal, an
# error) returns None and the format's parser reads the chunk by the type rule above, from
# the start. So a fast path only decides what the full parser would decide, sooner: it never
# reads a chunk the parser would read otherwise. AttributeError (a dict or a JSON scalar
# where an object should be) is one of those odd types.


#: What a fast path gives: the tokens and the end marks (a :class:`Parsed` with nothing else).
Fast = tuple[list[Token], tuple[int, ...]]
_parsed = tuple.__new__  # Parsed(...) without its Python __new__: _parsed(Parsed, (tokens, 0, None, ended, 0))
_FLOOR = CENSORED_AT_OR_BELOW


def _entry_tokens(index: int, entries: list[Any], tokens: list[Token]) -> bool:
    """Append the tokens of ``{token, logprob, top_logprobs}`` entries; False when one is
    not the common shape (the caller's parser then reads the chunk).

    Values that are ordinary logprobs (floats in (-9999, 0]) make the token here; any
    other goes through :func:`make_token`, the value policy, as in the full parser.
    """
    for e in entries:
        tops = e.top_logprobs
        text = e.token
        raw = e.logprob
        if type(text) is not str:
            return False
        if type(tops) is not list:
            if tops is not None:
                return False
            tops = ()
        alts = []
        for a in tops:
            v = a.logprob
            if type(v) is float and _FLOOR < v <= 0.0:
                alts.append(v)
            else:
                tokens.append(make_token(index, text, raw, [a.logprob for a in tops]))
                break
        else:
            if type(raw) is float and _FLOOR < raw <= 0.0:
                tokens.append(Token(index, text, raw, OK, tuple(alts)))
            else:
                tokens.append(make_token(index, text, raw, alts))
    return True


def _fast_chat(chunk: Any) -> Fast | None:
    """A streamed chat chunk whose every choice carries ``logprobs.content`` entries."""
    try:
        choices = chunk.choices
        if type(choices) is not list or not choices:
            return None
        tokens: list[Token] = []
        ended: tuple[int, ...] = ()
        for choice in choices:
            index = choice.index
            logprobs = choice.logprobs
            if type(index) is not int or index < 0 or logprobs is None:
                return None
            entries = logprobs.content
            if type(entries) is not list or not entries or logprobs.refusal is not None:
                return None
            for e in entries:  # _entry_tokens, inline: this runs for every chunk of a chat stream
                tops = e.top_logprobs
                text = e.token
                raw = e.logprob
                if type(text) is not str:
                    return None
                if type(tops) is not list:
                    if tops is not None:
                        return None
                    tops = ()
                alts = []
                for a in tops:
                    v = a.logprob
                    if type(v) is float and _FLOOR < v <= 0.0:
                        alts.append(v)
                    else:
                        tokens.append(make_token(index, text, raw, [a.logprob for a in tops]))
                        break
                else:
                    if type(raw) is float and _FLOOR < raw <= 0.0:
                        tokens.append(Token(index, text, raw, OK, tuple(alts)))
                    else:
                        tokens.append(make_token(index, text, raw, alts))
            finish = choice.finish_reason
            if finish is not None:
                if type(finish) is not str:
                    return None
                if finish:
                    ended += (index,)
        return tokens, ended
    except AttributeError:
        return None


def _fast_completions(chunk: Any) -> Fast | None:
    """A legacy Completions chunk whose every choice carries the parallel lists (or entries)."""
    try:
        choices = chunk.choices
        if type(choices) is not list or not choices:
            return None
        tokens: list[Token] = []
        ended: tuple[int, ...] = ()
        for choice in choices:
            index = choice.index
            logprobs = choice.logprobs
            if type(index) is not int or index < 0 or logprobs is None:
                return None
            values = logprobs.token_logprobs
            if values is None:  # llama-server: chat-shaped entries in a text_completion
                entries = logprobs.content
                if (type(entries) is not list or not entries or logprobs.refusal is not None
                        or not _entry_tokens(index, entries, tokens)):
                    return None
            else:
                texts = logprobs.tokens
                tops = logprobs.top_logprobs
                if (type(values) is not list or not values or type(texts) is not list or type(tops) is not list
                        or len(texts) != len(values) or len(tops) != len(values)):
                    return None
                for raw, text, top in zip(values, texts, tops):
                    if type(text) is not str or type(top) is not dict:
                        return None
                    alts = tuple(top.values())
                    for v in alts:
                        if type(v) is not float or not _FLOOR < v <= 0.0:
                            tokens.append(make_token(index, text, raw, alts))
                            break
                    else:
                        if type(raw) is float and _FLOOR < raw <= 0.0:
                            tokens.append(Token(index, text, raw, OK, alts))
                        else:
                            tokens.append(make_token(index, text, raw, alts))
            finish = choice.finish_reason
            if finish is not None:
                if type(finish) is not str:
                    return None
                if finish:
                    ended += (index,)
        return tokens, ended
    except AttributeError:
        return None


def _fast_responses(chunk: Any) -> Fast | None:
    """A Responses ``response.output_text.delta`` event that carries logprobs."""
    try:
        if chunk.type != "response.output_text.delta":
            return None
        entries = chunk.logprobs
        tokens: list[Token] = []
        if type(entries) is not list or not entries or not _entry_tokens(0, entries, tokens):
            return None
        return tokens, ()
    except AttributeError:
        return None


def _fast_native(chunk: Any) -> Fast | None:
    """A llama.cpp ``/completion`` event whose entries carry ``logprob`` and ``top_logprobs``."""
    try:
        index = chunk.index
        if index is None:
            index = 0
        elif type(index) is not int or index < 0:
            return None
        stop = chunk.stop is True
        entries = chunk.completion_probabilities
        if type(entries) is not list or not entries or (stop and chunk.content == ""):
            return None  # no tokens, or the recap that ends an older server's stream
        for e in entries:
            if e.logprob is None:
                return None  # the probability shapes, or no value
        tokens: list[Token] = []
        if not _entry_tokens(index, entries, tokens):
            return None
        return tokens, (index,) if stop else ()
    except AttributeError:
        return None


#: The fast path of each format that has one (:func:`_fast_chat` and its kind): the tokens
#: and end marks of a chunk of the common shape, read by attribute, or None.
FAST_PARSERS: dict[str, Callable[[Any], Fast | None]] = {
    "openai-chat": _fast_chat,
    "openai-completions": _fast_completions,
    "openai-responses": _fast_responses,
    "llamacpp-native": _fast_native,
}


# -- OpenAI Chat Completions and legacy Completions ----------------------------------------


def _legacy_tokens(index: int, get: Getter, logprobs: Any, values: Any, tokens: list[Token]) -> int:
    """Parallel lists: ``tokens``, ``token_logprobs``, ``top_logprobs`` as maps token -> logprob.

    Legacy Completions, and chat choices from Together and older vLLM. Duplicate tokens
    collapse in a map, so a position may list fewer alternatives than asked.
    """
    if type(values) is not list:
        values = _as_list(values)
        if values is None:
            return 1
    texts = get(logprobs, "tokens", None)
    if type(texts) is not list:
        texts = _as_list(texts) or ()
    tops = get(logprobs, "top_logprobs", None)
    if type(tops) is not list:
        tops = _as_list(tops) or ()
    n_texts, n_tops = len(texts), len(tops)
    for j, raw in enumerate(values):
        text = texts[j] if j < n_texts else ""
        top = tops[j] if j < n_tops else None
        tokens.append(make_token(
            index,
            text if type(text) is str else _text(text),
            raw,
            top.values() if isinstance(top, dict) else (),
        ))
    return 0


def _choices_parser(chat: bool, name: str, doc: str) -> Callable[[Any], Parsed]:
    """The parser of chat or legacy Completions choices: one body, two formats (a closure,
    not a shared helper, so that reading a chunk costs no extra call)."""

    def parse(chunk: Any) -> Parsed:
        get: Getter = _DICT_GET
        if type(chunk) is not dict:
            fast_read = fast(chunk)
            if fast_read is not None:
                return _parsed(Parsed, (fast_read[0], 0, None, fast_read[1], 0))
            reader = _reader(chunk)
            if reader is None:
                return _not_an_object()
            get = reader
        choices = get(chunk, "choices", None)
        malformed = 0
        if type(choices) is not list:
            choices = _as_list(choices)
            if choices is None:
                choices, malformed = (), 1
        tokens: list[Token] = []
        unscored = 0
        ended: tuple[int, ...] = ()
        for position, choice in enumerate(choices):
            cget = _DICT_GET if type(choice) is dict else _reader(choice)
            if cget is None:
                malformed += 1
                continue
            index = cget(choice, "index", None)
            if type(index) is not int or index < 0:
                index = _index(index, position)
                if index is None:
                    malformed += 1  # never merged into another choice
                    continue
            before = len(tokens)
            logprobs = cget(choice, "logprobs", None)
            bad = 0
            if logprobs is not None:
                lget = _DICT_GET if type(logprobs) is dict else _reader(logprobs)
                # Completions carry the parallel lists; chat carries entries, or the lists on
                # Together's and older vLLM's answers: each is looked for where it is likely first.
                values = None if chat or lget is None else lget(logprobs, "token_logprobs", None)
                if values is None and lget is not None:
                    # Refusal and reasoning tokens are generated tokens: they count too.
                    for key in ("content", "refusal"):
                        entries = lget(logprobs, key, None)
                        if entries is None:
                            continue
                        if type(entries) is list:  # the common case inline: it runs for every chunk
                            for e in entries:
                                eget = _DICT_GET if type(e) is dict else _reader(e)
                                if eget is None:
                                    bad += 1
                                else:
                                    tokens.append(_entry_token(index, e, eget))
                        else:
                            bad += _entries(index, entries, tokens)
                    if chat and len(tokens) == before:
                        values = lget(logprobs, "token_logprobs", None)
                if values is not None:
                    bad += _legacy_tokens(index, lget, logprobs, values, tokens)  # type: ignore[arg-type]
                elif lget is None:
                    if type(logprobs) is float or type(logprobs) is int:
                        # Together streams the sampled token's logprob as a bare number, one token a chunk.
                        delta = cget(choice, "delta", None)
                        tokens.append(make_token(index, _text(_field(delta, "content")), logprobs))
                    else:
                        bad = 1
            malformed += bad
            if len(tokens) == before and not bad:
                if chat:
                    part = cget(choice, "delta", None) or cget(choice, "message", None)
                    if part is not None and _has_text(part):
                        unscored += 1
                elif _text(cget(choice, "text", None)):
                    unscored += 1
            finish = cget(choice, "finish_reason", None)
            if finish and isinstance(finish, str):
                ended += (index,)
        return Parsed(tokens, unscored, error_message(chunk) if type(chunk) is dict else None, ended, malformed)

    fast = _fast_chat if chat else _fast_completions
    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


parse_openai_chat = _choices_parser(True, "parse_openai_chat", """OpenAI Chat Completions (and vLLM, SGLang, llama.cpp, Ollama /v1, TGI /v1, Together).

    Streamed chunks (``delta``) and whole answers (``message``) read alike. Besides
    ``logprobs.content`` (and ``refusal``), a choice may carry the legacy parallel lists
    (Together's and older vLLM's answers) or, in Together's stream, a bare number.
    """)

parse_openai_completions = _choices_parser(False, "parse_openai_completions", """OpenAI legacy Completions
    (and vLLM, llama-cpp-python; llama-server's chat-shaped ones).""")


# -- OpenAI Responses ---------------------------------------------------------------------

#: Events that end a Responses stream (``response.done`` is the Realtime API's name).
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed", "response.done")
#: A whole Response object with one of these statuses is finished.
_RESPONSE_FINAL = ("completed", "incomplete", "failed", "cancelled")


def parse_openai_responses(chunk: Any) -> Parsed:
    """OpenAI Responses API: stream events (logprobs ride on ``response.output_text.delta``)
    or a whole Response object (``object: "response"``, logprobs in ``output_text`` parts)."""
    if type(chunk) is not dict:
        fast_read = _fast_responses(chunk)
        if fast_read is not None:
            return _parsed(Parsed, (fast_read[0], 0, None, fast_read[1], 0))
    get = _reader(chunk)
    if get is None:
        return _not_an_object()
    kind = get(chunk, "type", None)
    if kind == "response.output_text.delta":
        entries = get(chunk, "logprobs", None)
        if _none(entries):
            return Parsed([], 1 if _text(get(chunk, "delta", None)) else 0)
        tokens: list[Token] = []
        malformed = _entries(0, entries, tokens)
        return Parsed(tokens, 0, None, (), malformed)
    if isinstance(kind, str):
        if kind in _RESPONSE_ENDS:
            error = None
            if kind == "response.failed":
                error = error_message(get(chunk, "response", None)) or "response.failed"
            return Parsed([], 0, error, (0,))
        if kind == "error":
            return Parsed([], 0, error_message(chunk))
        # Other events (created, output_text.done which repeats the logprobs, ...) add nothing.
        return Parsed([], 0, _dict_error(chunk))
    if get(chunk, "object", None) == "response":
        return _response_object(chunk, get)
    return Parsed([], 0, _dict_error(chunk))


def _response_object(response: Any, get: Getter) -> Parsed:
    tokens: list[Token] = []
    unscored = malformed = 0
    output = _as_list(get(response, "output", None))
    if output is None:
        output, malformed = (), 1
    for item in output:
        iget = _reader(item)
        if iget is None:
            malformed += 1
            continue
        if iget(item, "type", None) != "message":
            continue  # reasoning, tool calls: no logprobs
        parts = _as_list(iget(item, "content", None))
        if parts is None:
            malformed += 1
            continue
        for part in parts:
            pget = _reader(part)
            if pget is None:
                malformed += 1
                continue
            if pget(part, "type", None) != "output_text":
                continue
            entries = pget(part, "logprobs", None)
            if not _none(entries):
                malformed += _entries(0, entries, tokens)
            elif _text(pget(part, "text", None)):
                unscored += 1
    status = get(response, "status", None)
    finished = isinstance(status, str) and status in _RESPONSE_FINAL
    error = (error_message(response) or "response failed") if status == "failed" else _dict_error(response)
    return Parsed(tokens, unscored, error, (0,) if finished else (), malformed)


# -- llama.cpp native ---------------------------------------------------------------------


def parse_llamacpp_native(chunk: Any) -> Parsed:
    """llama.cpp ``/completion``, streamed or whole.

    Three shapes of ``completion_probabilities`` entries: ``logprob`` with
    ``top_logprobs``; ``prob`` with ``top_probs`` (``post_sampling_probs``); and the older
    shape still sent by ik_llama.cpp, ``{"content", "probs": [{"tok_str", "prob"}]}``,
    where the sampled token is the ``probs`` entry whose ``tok_str`` is the ``content``
    (censored when it is not listed: it was less likely than every listed one).

    The older servers end a stream with an event (``"stop": true``, empty ``content``)
    that repeats every token's probabilities: those were counted as they came.
    """
    get: Getter = _DICT_GET
    if type(chunk) is not dict:
        fast_read = _fast_native(chunk)
        if fast_read is not None:
            return _parsed(Parsed, (fast_read[0], 0, None, fast_read[1], 0))
        reader = _reader(chunk)
        if reader is None:
            return _not_an_object()
        get = reader
    index = get(chunk, "index", None)
    if type(index) is not int or index < 0:
        index = _index(index, 0)
        if index is None:
            return Parsed([], 0, _dict_error(chunk), (), 1)
    stop = get(chunk, "stop", None) is True
    ended = (index,) if stop else ()
    entries = get(chunk, "completion_probabilities", None)
    content = get(chunk, "content", None)
    if type(entries) is not list:
        entries = _as_list(entries)
        if entries is None:
            return Parsed([], 0, _dict_error(chunk), ended, 1)
    if not entries:
        return Parsed([], 1 if _text(content) else 0, _dict_error(chunk), ended)
    if stop and content == "":
        return Parsed([], 0, _dict_error(chunk), ended)  # the recap of a stream
    tokens: list[Token] = []
    malformed = 0
    for e in entries:
        eget = _DICT_GET if type(e) is dict else _reader(e)
        if eget is None:
            malformed += 1
        elif eget(e, "logprob", None) is not None:
            tokens.append(_entry_token(index, e, eget))
        elif eget(e, "probs", None) is not None:
            tokens.append(_tok_str_token(index, e, eget))
        elif eget(e, "prob", None) is not None:
            tops = eget(e, "top_probs", None)
            tokens.append(make_token(index, _text(eget(e, "token", None)), eget(e, "prob", None),
                                     _alternatives(tops, "prob"), True))
        else:
            tokens.append(_entry_token(index, e, eget))  # no value: the policy skips it
    return Parsed(tokens, 0, None, ended, malformed)


def _tok_str_token(index: int, e: Any, get: Getter) -> Token:
    """The older llama.cpp entry: ``probs`` lists the top tokens, the sampled one among them or not."""
    content = get(e, "content", None)
    listed = _as_list(get(e, "probs", None)) or ()
    alternatives = []
    raw: Any = None
    found = False
    for p in listed:
        pget = _reader(p)
        if pget is None:
            continue
        prob = pget(p, "prob", None)
        alternatives.append(prob)
        if not found and isinstance(content, str) and pget(p, "tok_str", None) == content:
            raw, found = prob, True
    if alternatives and not found:
        raw = 0.0  # not among the listed: less likely than any of them (censored)
    return make_token(index, _text(content), raw, alternatives, True)


# -- TGI, Ollama, Gemini ------------------------------------------------------------------


def parse_tgi(chunk: Any) -> Parsed:
    """Hugging Face TGI: ``/generate_stream`` events (one ``token``, ``top_tokens`` beside it)
    or a whole ``/generate`` answer (``details.tokens`` and ``details.top_tokens``)."""
    get = _reader(chunk)
    if get is None:
        return _not_an_object()
    details = get(chunk, "details", None)
    generated = get(chunk, "generated_text", None)
    has_details = details is not None and _reader(details) is not None
    ended = (0,) if has_details or isinstance(generated, str) else ()
    token = get(chunk, "token", None)
    if token is not None:
        tget = _reader(token)
        if tget is None:
            return Parsed([], 0, _dict_error(chunk), ended, 1)
        tops = get(chunk, "top_tokens", None)
        return Parsed([make_token(0, _text(tget(token, "text", None)), tget(token, "logprob", None),
                                  _alternatives(tops, "logprob"))], 0, _dict_error(chunk), ended)
    tokens: list[Token] = []
    malformed = 0
    if has_details:
        dget = _reader(details)
        listed = dget(details, "tokens", None)  # type: ignore[misc]
        if listed is not None:
            malformed = _tgi_tokens(listed, dget(details, "top_tokens", None), tokens)  # type: ignore[misc]
    unscored = 1 if not tokens and not malformed and _text(generated) else 0
    return Parsed(tokens, unscored, _dict_error(chunk), ended, malformed)


def _tgi_tokens(listed: Any, tops: Any, tokens: list[Token]) -> int:
    listed = _as_list(listed)
    if listed is None:
        return 1
    tops = _as_list(tops) or ()
    malformed = 0
    for j, t in enumerate(listed):
        tget = _reader(t)
        if tget is None:
            malformed += 1
            continue
        alternatives = _alternatives(tops[j], "logprob") if j < len(tops) else ()
        tokens.append(make_token(0, _text(tget(t, "text", None)), tget(t, "logprob", None), alternatives))
    return malformed


def parse_ollama(chunk: Any) -> Parsed:
    """Ollama native ``/api/chat`` and ``/api/generate``: a ``logprobs`` list beside the message,
    one NDJSON line at a time or one whole answer (``"done": true``)."""
    get = _reader(chunk)
    if get is None:
        return _not_an_object()
    ended = (0,) if get(chunk, "done", None) is True else ()
    entries = get(chunk, "logprobs", None)
    if _none(entries):
        message = get(chunk, "message", None)
        text = _has_text(message) if message is not None else bool(_text(get(chunk, "response", None)))
        return Parsed([], 1 if text else 0, _dict_error(chunk), ended)
    tokens: list[Token] = []
    malformed = _entries(0, entries, tokens)
    return Parsed(tokens, 0, _dict_error(chunk), ended, malformed)


def parse_gemini(chunk: Any) -> Parsed:
    """Google Gemini ``generateContent`` and ``streamGenerateContent?alt=sse``.

    Each candidate's ``logprobsResult`` lists ``chosenCandidates`` (the sampled tokens)
    and, position by position, ``topCandidates[].candidates`` (the alternatives), all as
    ``{token, tokenId, logProbability}``. Gemini writes ``-1.2676506e30`` for a token it
    did not rank: below the censor line, so such a value is censored, and bounds nothing
    as an alternative. ``avgLogprobs`` is ignored: the tokens say more.
    """
    get = _reader(chunk)
    if get is None:
        return _not_an_object()
    error = _dict_error(chunk)
    candidates = get(chunk, "candidates", None)
    if candidates is None:
        blocked = _field(get(chunk, "promptFeedback", None), "blockReason")
        if blocked and not error:
            error = f"the prompt was blocked: {_message(blocked)}"
        return Parsed([], 0, error)
    malformed = 0
    candidates = _as_list(candidates)
    if candidates is None:
        candidates, malformed = (), 1
    tokens: list[Token] = []
    unscored = 0
    ended: tuple[int, ...] = ()
    for position, candidate in enumerate(candidates):
        cget = _reader(candidate)
        if cget is None:
            malformed += 1
            continue
        index = _index(cget(candidate, "index", None), position)
        if index is None:
            malformed += 1
            continue
        before = len(tokens)
        bad = 0
        result = cget(candidate, "logprobsResult", None)
        if result is not None:
            rget = _reader(result)
            if rget is None:
                bad = 1
            else:
                chosen = rget(result, "chosenCandidates", None)
                if chosen is not None:
                    bad = _gemini_tokens(index, chosen, rget(result, "topCandidates", None), tokens)
        malformed += bad
        if len(tokens) == before and not bad and _gemini_has_text(cget(candidate, "content", None)):
            unscored += 1
        finish = cget(candidate, "finishReason", None)
        if finish and isinstance(finish, str):
            ended += (index,)
    return Parsed(tokens, unscored, error, ended, malformed)


def _gemini_tokens(index: int, chosen: Any, tops: Any, tokens: list[Token]) -> int:
    chosen = _as_list(chosen)
    if chosen is None:
        return 1
    tops = _as_list(tops) or ()
    malformed = 0
    for j, c in enumerate(chosen):
        cget = _reader(c)
        if cget is None:
            malformed += 1
            continue
        alternatives = _alternatives(_field(tops[j], "candidates"), "logProbability") if j < len(tops) else ()
        tokens.append(make_token(index, _text(cget(c, "token", None)), cget(c, "logProbability", None), alternatives))
    return malformed


def _gemini_has_text(content: Any) -> bool:
    for part in _as_list(_field(content, "parts")) or ():
        if _text(_field(part, "text")):
            return True
    return False


# -- Typed decoding of raw bytes ------------------------------------------------------------
#
# Raw SSE bytes are decoded (msgspec, in C) into structs that hold only the fields the
# format's parser reads, typed as the common shape has them. Decoding skips every other
# field without building it, and checks the types on the way: 4-6 times faster than
# json.loads into dicts. A field whose value is not of the declared type makes the whole
# chunk fail to decode (msgspec.ValidationError); the reader then decodes that chunk into
# dicts as before and the parser reads it by the type rule. Fields the parsers read but
# whose presence is rare (an error, a refusal's text, the legacy lists in a chat chunk) are
# declared ``None``: any value sends the chunk that way. So a struct reads as the dict
# would: every field a parser reads is declared, and read only with its declared type.


#: A logprob as the fast paths take it, an ordinary one: a float in (-9999, 0]. Any other
#: value (a censored -9999, a positive one) makes the typed decode refuse its chunk, which is
#: then read by the value policy: the fast paths on typed structs need not check values.
_Logprob = Annotated[float, msgspec.Meta(gt=CENSORED_AT_OR_BELOW, le=0.0)]


class _Alt(msgspec.Struct, gc=False):
    logprob: _Logprob


class _ProbAlt(msgspec.Struct, gc=False):
    prob: float


class _Entry(msgspec.Struct, gc=False):
    token: str = ""
    logprob: _Logprob | None = None
    top_logprobs: list[_Alt] | None = None


class _ChatLogprobs(msgspec.Struct, gc=False):
    content: list[_Entry] | None = None
    refusal: list[_Entry] | None = None
    token_logprobs: None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _ChatChoice(msgspec.Struct, gc=False):
    index: int | None = None
    logprobs: _ChatLogprobs | float | None = None  # a bare number: Together's stream
    delta: _Delta | None = None
    message: None = None
    finish_reason: str | None = None


class _ChatChunk(msgspec.Struct, gc=False):
    choices: list[_ChatChoice] | None = None
    error: None = None
    type: None = None


class _LegacyLogprobs(msgspec.Struct, gc=False):
    tokens: list[str] | None = None
    token_logprobs: list[_Logprob | None] | None = None
    top_logprobs: list[dict[str, _Logprob] | None] | None = None
    content: list[_Entry] | None = None
    refusal: list[_Entry] | None = None


class _CompletionChoice(msgspec.Struct, gc=False):
    index: int | None = None
    text: str | None = None
    logprobs: _LegacyLogprobs | None = None
    finish_reason: str | None = None


class _CompletionChunk(msgspec.Struct, gc=False):
    choices: list[_CompletionChoice] | None = None
    error: None = None
    type: None = None


class _ResponsesEvent(msgspec.Struct, gc=False):
    type: str | None = None
    logprobs: list[_Entry] | None = None
    delta: str | None = None
    response: None = None
    object: None = None
    error: None = None
    message: None = None
    code: None = None


class _NativeEntry(msgspec.Struct, gc=False):
    token: str = ""
    logprob: _Logprob | None = None
    top_logprobs: list[_Alt] | None = None
    prob: float | None = None
    top_probs: list[_ProbAlt] | None = None
    probs: None = None


class _NativeChunk(msgspec.Struct, gc=False):
    index: int | None = None
    content: str | None = None
    stop: bool | None = None
    completion_probabilities: list[_NativeEntry] | None = None
    error: None = None
    type: None = None


#: The typed decoder of each format that has one: ``decode(text)`` gives a struct its
#: parser reads, or raises ``msgspec.DecodeError`` (a ``ValueError``) when the chunk is not
#: the common shape or not JSON; the caller then decodes it as before.
TYPED_DECODERS: dict[str, Callable[[str], Any]] = {
    "openai-chat": msgspec.json.Decoder(_ChatChunk).decode,
    "openai-completions": msgspec.json.Decoder(_CompletionChunk).decode,
    "openai-responses": msgspec.json.Decoder(_ResponsesEvent).decode,
    "llamacpp-native": msgspec.json.Decoder(_NativeChunk).decode,
}


# -- Readers of the typed structs ---------------------------------------------------------
#
# What the fast paths above decide, for the structs of the typed decoders (a raw stream's
# events), with fewer checks: msgspec has checked every type on the way (a list is a list,
# an index an int or None) and every logprob's value (an ordinary one, or None: _Logprob).
# A reader appends the chunk's tokens to the batch of the read and gives its end marks, or
# gives None having appended nothing: the chunk is then read as before (:func:`FAST_PARSERS`,
# else the format's parser). It also gives None when a token belongs to a choice not in
# ``known`` (a new choice is made, and may be refused, on the way that reads it one by one);
# an index that is None or negative is never a known one.

#: ``reader(chunk, batch, known) -> end marks | None`` (see above)
Reader = Callable[[Any, list[Token], dict[int, Any]], "tuple[int, ...] | None"]
_logprob_of = attrgetter("logprob")


def _typed_entries(index: int, entries: list[Any], batch: list[Token]) -> None:
    """The tokens of ``_Entry`` (or ``_NativeEntry``) structs: always the common shape."""
    for e in entries:
        tops = e.top_logprobs
        alts = tuple(map(_logprob_of, tops)) if tops else ()
        raw = e.logprob
        batch.append(Token(index, e.token, raw, OK, alts) if raw is not None else make_token(index, e.token, raw, alts))


def _read_chat(chunk: Any, batch: list[Token], known: dict[int, Any]) -> tuple[int, ...] | None:
    """:func:`_fast_chat`, for a ``_ChatChunk``."""
    if type(chunk) is not _ChatChunk or not chunk.choices:
        return None
    mark = len(batch)
    ended: tuple[int, ...] = ()
    for choice in chunk.choices:
        index = choice.index
        logprobs = choice.logprobs
        if (index not in known or type(logprobs) is not _ChatLogprobs or not logprobs.content
                or logprobs.refusal is not None):
            del batch[mark:]
            return None
        for e in logprobs.content:  # _typed_entries, inline: this runs for every chunk of a chat stream
            tops = e.top_logprobs
            alts = tuple(map(_logprob_of, tops)) if tops else ()
            raw = e.logprob
            batch.append(Token(index, e.token, raw, OK, alts) if raw is not None else make_token(index, e.token, raw, alts))
        if choice.finish_reason:
            ended += (index,)
    return ended


def _read_completions(chunk: Any, batch: list[Token], known: dict[int, Any]) -> tuple[int, ...] | None:
    """:func:`_fast_completions`, for a ``_CompletionChunk``."""
    if type(chunk) is not _CompletionChunk or not chunk.choices:
        return None
    mark = len(batch)
    ended: tuple[int, ...] = ()
    for choice in chunk.choices:
        index = choice.index
        logprobs = choice.logprobs
        if index not in known or logprobs is None:
            del batch[mark:]
            return None
        values = logprobs.token_logprobs
        if values is None:  # llama-server: chat-shaped entries in a text_completion
            if not logprobs.content or logprobs.refusal is not None:
                del batch[mark:]
                return None
            _typed_entries(index, logprobs.content, batch)
        else:
            texts = logprobs.tokens
            tops = logprobs.top_logprobs
            if (not values or texts is None or tops is None or len(texts) != len(values)
                    or len(tops) != len(values) or None in tops):
                del batch[mark:]
                return None
            for raw, text, top in zip(values, texts, tops):
                alts = tuple(top.values())  # type: ignore[union-attr]  # a None was refused above
                batch.append(Token(index, text, raw, OK, alts) if raw is not None else make_token(index, text, raw, alts))
        if choice.finish_reason:
            ended += (index,)
    return ended


def _read_responses(chunk: Any, batch: list[Token], known: dict[int, Any]) -> tuple[int, ...] | None:
    """:func:`_fast_responses`, for a ``_ResponsesEvent``."""
    if (type(chunk) is not _ResponsesEvent or chunk.type != "response.output_text.delta" or not chunk.logprobs
            or 0 not in known):
        return None
    _typed_entries(0, chunk.logprobs, batch)
    return ()


def _read_native(chunk: Any, batch: list[Token], known: dict[int, Any]) -> tuple[int, ...] | None:
    """:func:`_fast_native`, for a ``_NativeChunk``."""
    if type(chunk) is not _NativeChunk:
        return None
    index = chunk.index
    if index is None:
        index = 0
    stop = chunk.stop is True
    entries = chunk.completion_probabilities
    if index not in known or not entries or (stop and chunk.content == ""):
        return None  # no tokens, or the recap that ends an older server's stream
    for e in entries:
        if e.logprob is None:
            return None  # the probability shapes, or no value
    _typed_entries(index, entries, batch)
    return (index,) if stop else ()


#: The reader of each format's typed structs (what a raw stream's events are, see above).
TYPED_READERS: dict[str, Reader] = {
    "openai-chat": _read_chat,
    "openai-completions": _read_completions,
    "openai-responses": _read_responses,
    "llamacpp-native": _read_native,
}


#: :data:`TYPED_DECODERS` over a JSON array of events: one call decodes a read's run of
#: events (the per-call cost paid once); it refuses the array when it would refuse any of them.
TYPED_ARRAY_DECODERS: dict[str, Callable[[str], list[Any]]] = {
    "openai-chat": msgspec.json.Decoder(list[_ChatChunk]).decode,
    "openai-completions": msgspec.json.Decoder(list[_CompletionChunk]).decode,
    "openai-responses": msgspec.json.Decoder(list[_ResponsesEvent]).decode,
    "llamacpp-native": msgspec.json.Decoder(list[_NativeChunk]).decode,
}


#: Every format, by the name reports use.
FORMATS: dict[str, Callable[[Any], Parsed]] = {
    "openai-chat": parse_openai_chat,
    "openai-completions": parse_openai_completions,
    "openai-responses": parse_openai_responses,
    "llamacpp-native": parse_llamacpp_native,
    "tgi": parse_tgi,
    "ollama": parse_ollama,
    "gemini": parse_gemini,
}


def detect_format(chunk: Any) -> str | None:
    """The name of the format a chunk is in, or None when the chunk does not tell.

    Some chunks fit any format (``{"choices": []}``, an error event); detection then
    waits for the next one. Whole responses are told by the same marks as their chunks.
    """
    get = _reader(chunk)
    if get is None:
        return None
    choices = get(chunk, "choices", None)
    if choices is not None:
        obj = get(chunk, "object", None)
        if obj == "chat.completion.chunk" or obj == "chat.completion":
            return "openai-chat"
        if obj == "text_completion":
            return "openai-completions"
        for choice in _as_list(choices) or ():
            cget = _reader(choice)
            if cget is None:
                continue
            # "message": a non-streamed answer reads the same way.
            if cget(choice, "delta", None) is not None or cget(choice, "message", None) is not None:
                return "openai-chat"
            if cget(choice, "text", None) is not None:
                return "openai-completions"
        return None
    kind = get(chunk, "type", None)
    if isinstance(kind, str) and kind.startswith("response."):
        return "openai-responses"
    if get(chunk, "object", None) == "response":
        return "openai-responses"
    if not isinstance(chunk, dict):
        return None  # the remaining formats come only as decoded JSON
    if "completion_probabilities" in chunk or ("content" in chunk and "stop" in chunk):
        return "llamacpp-native"
    if isinstance(chunk.get("token"), dict) or "top_tokens" in chunk or "generated_text" in chunk:
        return "tgi"
    if "done" in chunk and ("message" in chunk or "response" in chunk):
        return "ollama"
    if isinstance(chunk.get("candidates"), list) or "promptFeedback" in chunk:
        return "gemini"
    return None


def parse_chunk(chunk: Any, fmt: str | None = None) -> Parsed:
    """Tokens, unscored text, error, end marks and malformed count of one chunk, in format
    ``fmt`` or the detected one."""
    if fmt is None:
        fmt = detect_format(chunk)
        if fmt is None:
            return Parsed([], 0, error_message(chunk))
    parser = FORMATS.get(fmt)
    if parser is None:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return parser(chunk)
