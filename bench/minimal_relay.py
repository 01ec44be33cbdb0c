"""The floor: the least a Python relay can do, as a raw ASGI app under the same uvicorn.

It reads the request, asks the upstream (aiohttp, one pooled session) for the same stream, decodes each event's
JSON (what any relay that accounts usage or detects the finish must do) and writes every chunk on as it came. No
middleware, no limits, no framing of its own: what tokenrelay costs beyond this is what tokenrelay adds.

    UPSTREAM_URL=http://127.0.0.1:<port>/v1/chat/completions uvicorn bench.minimal_relay:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import msgspec

_decode = msgspec.json.decode
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()  # startup: the session belongs to the serving loop; lifespan state reaches each request
        scope["state"]["session"] = pool = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await pool.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    session: aiohttp.ClientSession = scope["state"]["session"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = _decode(body)
    request |= {"stream": True, "stream_options": {"include_usage": True}}
    url = os.environ["UPSTREAM_URL"]
    async with session.post(url, data=msgspec.json.encode(request)) as upstream:
        await send({"type": "http.response.start", "status": upstream.status, "headers": _HEADERS})
        pending = b""
        async for chunk in upstream.content.iter_any():
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    _decode(event[6:])
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
