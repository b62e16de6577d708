"""The embedded model behind an OpenAI-compatible endpoint on 127.0.0.1: no compile of llama-server.

    python -m livepplx.serve --port 8080
    curl -N http://127.0.0.1:8080/v1/completions -H 'content-type: application/json' \\
      -d '{"prompt": "The capital of Peru is", "stream": true, "logprobs": 5, "max_tokens": 8}'

``POST /v1/chat/completions`` and ``POST /v1/completions`` take what
:class:`~livepplx.local.LocalClient` takes; with ``"stream": true`` the answer is server-sent
events, a ``data: {chunk}`` line per chunk and ``data: [DONE]`` at the end, as OpenAI's and
llama.cpp's servers send them. ``GET /v1/models`` names the model. A request the model cannot
answer is a 400 with OpenAI's error body. The model writes one answer at a time: a request
waits for the one being written. A client that goes away stops its generation at the next token.

Starlette and uvicorn (``pip install 'livepplx[serve]'``, or with llama-cpp-python's server).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any, AsyncIterator, Sequence

from .core.errors import LivepplxError
from .local import MODEL_NAME, LocalClient, LocalStream, default_model

__all__ = ["app", "main"]

_INSTALL = "pip install 'livepplx[serve]'"


def app(client: LocalClient | None = None) -> Any:
    """The ASGI application (Starlette) over ``client`` (default: the shared embedded model)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    local = client or LocalClient()
    # One answer at a time: the model holds one context. A semaphore, not a lock: the response
    # body is written by another task than the one that took the turn.
    turn = anyio.Semaphore(1)

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}},
                            status_code=status)

    async def events(stream: LocalStream) -> AsyncIterator[str]:
        try:
            while True:
                # Generation blocks: a worker thread writes each token (not cancelled midway,
                # so the stream is never closed while a token is being written).
                chunk = await anyio.to_thread.run_sync(next, stream, None)
                if chunk is None:
                    break
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        except LivepplxError as e:  # a failure mid-answer: said in the stream, as servers do
            yield f"data: {json.dumps({'error': {'message': str(e)}})}\n\n"

    class Answer(StreamingResponse):
        """The stream's events; when the response ends, however it ends (the answer's end, the
        client gone before or during it), the generation is closed and the turn given back."""

        def __init__(self, stream: LocalStream) -> None:
            super().__init__(events(stream), media_type="text/event-stream")
            self.stream = stream

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.stream.close()
                turn.release()

    async def answer(request: Request, kind: str) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        endpoint = local.chat.completions if kind == "chat" else local.completions
        await turn.acquire()
        try:
            result = await anyio.to_thread.run_sync(lambda: endpoint.create(**body))
        except LivepplxError as e:
            turn.release()
            return error(400, str(e))
        except BaseException:
            turn.release()
            raise
        if isinstance(result, LocalStream):
            return Answer(result)
        turn.release()
        return JSONResponse(result)

    async def chat(request: Request) -> Response:
        return await answer(request, "chat")

    async def completions(request: Request) -> Response:
        return await answer(request, "completions")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "livepplx"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m livepplx.serve [--port 8080]``: serve until Ctrl-C; exit 1 with one line when it cannot."""
    parser = argparse.ArgumentParser(prog="livepplx serve", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=_port, default=8080, help="the port on 127.0.0.1 (default 8080)")
    parser.add_argument("--local", action="store_true", help="the embedded model (the only one served)")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(f"livepplx: error: serving needs starlette and uvicorn: {_INSTALL}", file=sys.stderr)
        return 1
    listener = socket.socket()
    try:  # bound here, so a port in use is one line (uvicorn would log it and exit 3)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", args.port))
    except OSError as e:
        listener.close()
        print(f"livepplx: error: cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    try:
        model = default_model(on_note=lambda note: print(f"livepplx: {note}", file=sys.stderr))
        application = app(LocalClient(model))
    except (LivepplxError, ImportError) as e:
        listener.close()
        print(f"livepplx: error: {e if isinstance(e, LivepplxError) else _INSTALL}", file=sys.stderr)
        return 1
    print(f"livepplx: serving {MODEL_NAME} on http://127.0.0.1:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    uvicorn.Server(uvicorn.Config(application, log_level="warning")).run(sockets=[listener])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
