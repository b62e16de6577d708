"""A listener whose own failure must never break the stream it watches (telemetry, metrics)."""

from __future__ import annotations

import logging
from typing import Any

from ..core.state import Listener

__all__ = ["GuardedListener"]


class GuardedListener(Listener):
    """Runs its recording through :meth:`_safely`: an exception is caught, the first one is
    logged with its traceback on the subclass's module logger ("livepplx: <what> failed; the
    stream goes on"), later ones are not (a broken exporter would otherwise log every chunk)."""

    #: what a failure message calls the recording, e.g. "Prometheus recording"
    _what = "recording"
    _warned = False

    def _safely(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # the recording must never break the stream it counts
            if not self._warned:
                self._warned = True
                logging.getLogger(type(self).__module__).warning(
                    "livepplx: %s failed; the stream goes on", self._what, exc_info=True)
