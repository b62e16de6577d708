"""The core: bytes -> events -> token records -> statistics -> triggers -> one stream's state.

No I/O, no openai, no rich: tokens, errors, accumulator (and its C twin), stats, sse, formats,
triggers, state. It depends on nothing else in livepplx, and this file imports nothing.
"""
