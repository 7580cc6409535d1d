"""The same GET /v1/lookup on FastAPI, only to compare frameworks in bench/http_load.py (not shipped).

python bench/fastapi_app.py TABLE PORT
"""

from __future__ import annotations

import sys

import orjson
import uvicorn
from fastapi import FastAPI, Query, Response

from bulkinfer.lookup.table import open_table


def main() -> None:
    table_dir, port = sys.argv[1], int(sys.argv[2])
    table = open_table(table_dir)
    app = FastAPI(title="bulkinfer lookup (FastAPI comparison)")

    @app.get("/v1/lookup")
    async def lookup(q: str = Query(max_length=1024)) -> Response:  # async: no thread-pool hop per request
        answer = table.answer(q)
        return Response(orjson.dumps(answer), media_type="application/json", headers={"x-bulkinfer-version": table.version})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "version": table.version}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
