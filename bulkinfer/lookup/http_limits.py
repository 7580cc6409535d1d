"""The service's HTTP connection limits: a deadline per request, JSON for requests the parser rejects.

uvicorn closes idle keep-alive connections, but a connection that has sent part of
a request is held open for as long as the client likes (measured on uvicorn 0.54:
indefinitely), and a request its parser rejects (a 1 MB URL) gets a plain-text 400.
:func:`limited_protocol` returns uvicorn's httptools protocol with both fixed.
"""

from __future__ import annotations

from typing import Any

import orjson


def limited_protocol(request_timeout_s: float) -> type:
    """uvicorn's httptools protocol class with a per-request deadline and JSON 400s.

    Args:
        request_timeout_s: seconds from a request's first byte (or the connection's
            start) until the whole request must have arrived; then the connection is
            answered 408 and closed.

    Raises:
        ImportError: httptools is missing (``pip install 'uvicorn[standard]'``).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Closes a connection whose request does not arrive whole in time; answers parser errors in JSON."""

        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self._send_json_and_close(400, b"Bad Request", "bad_request", f"{msg} (too long, or not HTTP/1.1)")

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete and not self.cycle.more_body:
                return  # the request arrived whole and is being answered
            message = f"the request did not arrive whole within {request_timeout_s:g} s"
            self._send_json_and_close(408, b"Request Timeout", "request_timeout", message)

        def _send_json_and_close(self, status: int, reason: bytes, code: str, message: str) -> None:
            body = orjson.dumps({"error": {"code": code, "message": message}})
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            self.transport.write(head % (status, reason, len(body)) + body)
            self.transport.close()

    return LimitedHttpToolsProtocol
