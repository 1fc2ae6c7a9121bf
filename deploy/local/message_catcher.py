"""A local message gateway for ``./dev run``: keeps every message followup hands it.

What a real gateway would send as a text message, a call list entry, a chat or social message
or a letter is kept as ``<spool>/<delivery id>.json`` (the posted JSON), the way the local mail
catcher keeps e-mail.  A delivery posted again (a retry, the same ``Idempotency-Key``) replaces
its file: one copy per message.  Followup deletes a customer's files when they are erased
(``COMPLAINTS_MESSAGE_SPOOL``).

    python deploy/local/message_catcher.py --port 8026 --spool .local/messages
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response


def create_app(spool: Path) -> FastAPI:
    spool.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="local message gateway")

    @app.post("/messages")
    async def receive(request: Request) -> Response:
        try:
            message: Any = await request.json()
            delivery_id = uuid.UUID(str(message["id"]))  # the file's name: a UUID, no path
        except (ValueError, KeyError, TypeError):
            return Response(status_code=400)
        final = spool / f"{delivery_id}.json"
        partial = spool / f".{delivery_id}.json.tmp"
        partial.write_text(json.dumps(message, ensure_ascii=False, indent=2))
        os.replace(partial, final)  # whole or not at all
        return Response(status_code=200)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.spool), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
