"""A local OpenAI-compatible upstream that streams real-shaped chunks at a fixed pace.

For the gateway's tests and load test only (127.0.0.1, no model): each chat or completions
request is answered with a role chunk, one chunk per token every ``pace`` seconds (llama-server's
shape: ``choices[0].logprobs.content[0]`` with ``top_logprobs``, only when the request asked for
logprobs), a finish chunk and ``[DONE]``. ``GET /stats`` says how many requests started, ended
whole, or were closed by the client early, and how many token chunks were written.

* ``max_tokens`` sets the answer's length (default ``--tokens``).
* a prompt containing ``ramble`` gets confident tokens for 10 tokens, then unlikely ones
  (logprob -4): its running perplexity climbs past 20 after about 25 tokens.
* ``--ignore-logprobs``: never sends logprobs (a server that ignores the request).

    python tests/load/upstream.py --port 8099 --tokens 64 --pace 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web


class Upstream:
    def __init__(self, tokens: int = 64, pace: float = 0.02, ignore_logprobs: bool = False) -> None:
        self.tokens = tokens
        self.pace = pace
        self.ignore_logprobs = ignore_logprobs
        self.stats: dict[str, Any] = {"started": 0, "whole": 0, "closed_early": 0, "chunks": 0}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        app.router.add_post("/v1/completions", self.answer)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "local", "object": "model"}]})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def answer(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = body.get("max_tokens") or self.tokens
        prompt = json.dumps(body.get("messages") or body.get("prompt") or "")
        ramble = "ramble" in prompt
        asked = body.get("logprobs") not in (None, False, 0) and not self.ignore_logprobs
        top = int(body.get("top_logprobs") or (body.get("logprobs") if not chat else 0) or 0)
        if not body.get("stream"):
            return web.json_response({"error": {"message": "this test upstream only streams"}}, status=400)
        self.stats["started"] += 1
        self.stats["last_keys"] = sorted(body)  # what the gateway sent upstream (metadata must not be there)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident, created = f"cmpl-{self.stats['started']}", int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choice: dict[str, Any]) -> bytes:
            chunk = {"id": ident, "object": kind, "created": created, "model": "local", "choices": [choice]}
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        try:
            if chat:
                await response.write(event({"index": 0, "delta": {"role": "assistant", "content": None},
                                            "finish_reason": None}))
            for i in range(n):
                await asyncio.sleep(self.pace)
                text = f" w{i % 50}"
                logprob = -4.0 if ramble and i >= 10 else -0.05 - 0.01 * (i % 7)
                choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                if chat:
                    choice["delta"] = {"content": text}
                else:
                    choice["text"] = text
                if asked:
                    alts = [{"token": text, "logprob": logprob, "bytes": list(text.encode())}] + [
                        {"token": f" a{j}", "logprob": logprob - 1.5 - j, "bytes": list(f" a{j}".encode())}
                        for j in range(max(top - 1, 0))]
                    if chat:
                        choice["logprobs"] = {"content": [{**alts[0], "top_logprobs": alts[:top]}]}
                    else:
                        choice["logprobs"] = {"tokens": [text], "token_logprobs": [logprob], "text_offset": [i],
                                              "top_logprobs": [{a["token"]: a["logprob"] for a in alts[:top]}]}
                await response.write(event(choice))
                self.stats["chunks"] += 1
            last: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                last["delta"] = {}
            else:
                last["text"] = ""
            await response.write(event(last))
            await response.write(b"data: [DONE]\n\n")
            self.stats["whole"] += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.stats["closed_early"] += 1
            raise
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--pace", type=float, default=0.02)
    parser.add_argument("--ignore-logprobs", action="store_true")
    args = parser.parse_args()
    upstream = Upstream(args.tokens, args.pace, args.ignore_logprobs)
    web.run_app(upstream.app(), host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=4096)


if __name__ == "__main__":
    main()
