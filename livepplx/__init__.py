"""livepplx: live perplexity of a streaming LLM answer, token by token.

>>> import livepplx
>>> state = livepplx.StreamState()
>>> with open(livepplx.recording_path("llamacpp-python-chat"), "rb") as f:
...     _ = state.handle(f.read())
>>> state.format, state.tokens, round(state.ppl, 3)
('openai-chat', 50, 10.16)
"""

from .core.errors import (
    CallbackError,
    LivepplxError,
    NoLogprobsError,
    NotAStreamError,
    ServerStreamError,
    StreamErrorEvent,
    StreamFormatError,
    TooManyChoicesError,
)
from .core.formats import FORMATS, Parsed, detect_format, parse_chunk
from .monitor import AsyncMonitoredStream, MonitoredStream, amonitor, monitor
from .recordings import RECORDINGS, recording_path
from .score import score
from .core.sse import Event, StreamDecoder
from .core.state import Listener, MonitorOptions, Stop, StreamState
from .core.stats import ChoiceStats
from .core.tokens import Status, Token, make_token
from .core.triggers import (
    Condition,
    Escalation,
    Trigger,
    TriggerEvent,
    entropy_above,
    group_confidence_below,
    min_tokens,
    moving_ppl_above,
    ppl_above,
    prob_below,
    sustained,
    window_ppl_above,
)

__all__ = [
    "AsyncCarRouter",
    "AsyncDeepConfVoter",
    "DeepConfVoter",
    "DeepConfPlan",
    "VoteResult",
    "AsyncMonitoredStream",
    "CarCalibration",
    "CarPlan",
    "CarResult",
    "CarRouter",
    "Gauge",
    "auroc",
    "deepconf_threshold",
    "fit_threshold",
    "watch",
    "ChoiceStats",
    "Condition",
    "Escalation",
    "MonitoredStream",
    "Stop",
    "Trigger",
    "TriggerEvent",
    "amonitor",
    "astream",
    "build_request",
    "entropy_above",
    "group_confidence_below",
    "min_tokens",
    "monitor",
    "moving_ppl_above",
    "ppl_above",
    "prob_below",
    "stream",
    "sustained",
    "window_ppl_above",
    "Event",
    "FORMATS",
    "LivepplxError",
    "NoLogprobsError",
    "Parsed",
    "RECORDINGS",
    "Status",
    "StreamDecoder",
    "StreamErrorEvent",
    "ServerStreamError",
    "CallbackError",
    "NotAStreamError",
    "TooManyChoicesError",
    "MonitorOptions",
    "score",
    "Listener",
    "StreamFormatError",
    "StreamState",
    "Token",
    "detect_format",
    "make_token",
    "parse_chunk",
    "recording_path",
]

__version__ = "0.1.0"

# These need openai, rich or numpy, which are slow to import: loaded on first use, so
# `import livepplx` and `livepplx replay` stay light.
_LAZY = {
    "stream": "client",
    "astream": "client",
    "build_request": "client",
    "watch": "views.gauge",
    "Gauge": "views.gauge",
    "CarRouter": "decide.car",
    "DeepConfVoter": "decide.deepconf",
    "AsyncDeepConfVoter": "decide.deepconf",
    "DeepConfPlan": "decide.deepconf",
    "VoteResult": "decide.deepconf",
    "AsyncCarRouter": "decide.car",
    "CarPlan": "decide.car",
    "CarResult": "decide.car",
    "CarCalibration": "decide.calibrate",
    "fit_threshold": "decide.calibrate",
    "deepconf_threshold": "decide.calibrate",
    "auroc": "decide.calibrate",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'livepplx' has no attribute {name!r}")
