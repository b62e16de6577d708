"""livepplx: live perplexity of a streaming LLM answer, token by token.

>>> import livepplx
>>> state = livepplx.StreamState()
>>> with open(livepplx.recording_path("llamacpp-python-chat"), "rb") as f:
...     _ = state.handle(f.read())
>>> state.format, state.tokens, round(state.ppl, 3)
('openai-chat', 50, 10.16)
"""

from .errors import LivepplxError, NoLogprobsError, StreamErrorEvent, StreamFormatError
from .formats import FORMATS, Parsed, detect_format, parse_chunk
from .recordings import RECORDINGS, recording_path
from .sse import Event, StreamDecoder
from .state import StreamState
from .stats import ChoiceStats
from .tokens import Status, Token, make_token

__all__ = [
    "ChoiceStats",
    "Event",
    "FORMATS",
    "LivepplxError",
    "NoLogprobsError",
    "Parsed",
    "RECORDINGS",
    "Status",
    "StreamDecoder",
    "StreamErrorEvent",
    "StreamFormatError",
    "StreamState",
    "Token",
    "detect_format",
    "make_token",
    "parse_chunk",
    "recording_path",
]

__version__ = "0.1.0"
