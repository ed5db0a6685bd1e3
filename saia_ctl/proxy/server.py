"""The aiohttp application: OpenAI-compatible routes over the SSH pool.

Routes: ``GET /healthz`` (the proxy itself and its SSH link), ``GET
/v1/models`` and ``GET /v1/models/{id}`` (from the ``status`` control
command, cached), and every other path under ``/v1/`` (any method) passed
through to the cluster as one SSH session, the answer streamed back chunk by
chunk. Errors are OpenAI-style JSON; nothing the client sends is evaluated by
a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import protocol
from .apikeys import ApiKeys
from .config import ProxyConfig
from .keepalive import KeepAlive
from .model_list import StatusError, models_from_status
from .sse import UsageStripper
from .ssh import SSH_FAILED, Session, SSHError, SSHPool
from .tunnel import Tunnels, TunnelStream

log = logging.getLogger("saia_ctl.proxy")

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]{1,256})\r\n')
# GET /v1/usage needs no model: the login node answers it (docs/wire-protocol.md); any service id does.
USAGE_PATH = "/v1/usage"
USAGE_SERVICE = "usage"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return web.Response(
        status=status,
        body=protocol.openai_error(message, kind, code, param),
        content_type="application/json",
    )


class _Refused(Exception):
    """A request answered by the proxy itself (status, message, code)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class ModelsCache:
    """The ``status`` answer as OpenAI model objects, fetched at most once per TTL."""

    def __init__(self, pool: SSHPool, ttl: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self.created = int(time.time())
        self._data: list[dict[str, Any]] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> list[dict[str, Any]]:
        if self._data is not None and time.monotonic() - self._at < self.ttl:
            return self._data
        async with self._lock:
            if self._data is not None and time.monotonic() - self._at < self.ttl:
                return self._data
            try:
                data = models_from_status(await self.pool.run_control("status"), self.created)
            except (SSHError, StatusError) as e:
                log.error("status failed: %s", e)
                if self._data is not None and time.monotonic() - self._at < max(60.0, 12 * self.ttl):
                    return self._data  # a short outage: the last list, rather than none
                raise _Refused(502, f"the cluster's model list is unavailable: {e}", "bad_gateway") from None
            self._data, self._at = data, time.monotonic()
            return data


class Proxy:
    """One proxy instance: configuration, SSH pool, keep-alive, caches, and the aiohttp app."""

    def __init__(self, cfg: ProxyConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.keys = ApiKeys(cfg.api_keys) if cfg.api_keys else None
        self.pool = SSHPool(cfg)
        self.keepalive = KeepAlive(self.pool, cfg.keepalive_interval)
        self.models = ModelsCache(self.pool, cfg.models_ttl)
        self.tunnels = Tunnels(self.pool, cfg) if cfg.tunnel_sessions else None
        self._keepalive_task: asyncio.Task[None] | None = None
        self.app = web.Application(client_max_size=cfg.max_body, middlewares=[self._errors])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/v1/models/{model_id}", self.get_model)
        self.app.router.add_route("*", "/v1/{tail:.*}", self.passthrough)
        self.app.router.add_route("*", "/{tail:.*}", self.not_found)
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    # -- life cycle -----------------------------------------------------------------
    async def _start(self, app: web.Application) -> None:
        self._keepalive_task = asyncio.create_task(self._keepalive_main())

    async def _keepalive_main(self) -> None:
        await self.keepalive.warm_up()
        await self.keepalive.run()

    async def _stop(self, app: web.Application) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive_task
        if self.tunnels is not None:
            await self.tunnels.close()
        await self.pool.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as e:
            return error_response(e.status, e.message, e.code)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error_response(e.status, e.reason or "request refused")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, "internal error in the proxy", "internal_error")

    # -- identity -------------------------------------------------------------------
    def identify(self, request: web.Request) -> str:
        """The user id: from the API-keys file when one is configured, else from the user header."""
        if self.keys is not None:
            user = self.keys.user_for(request.headers.get("Authorization"))
            if user is None:
                raise _Refused(
                    401, "invalid or missing API key (Authorization: Bearer ...)", "invalid_api_key"
                )
            return user
        user = request.headers.get(self.cfg.user_header) or self.cfg.default_user
        if not user:
            raise _Refused(401, f"no user identity: the {self.cfg.user_header} header is missing", "no_user")
        try:
            return protocol.check_user(user)
        except protocol.ProtocolError as e:
            raise _Refused(400, str(e), "invalid_user") from None

    # -- routes -----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        ka = self.keepalive.snapshot()
        body = {
            "status": "ok" if ka["ok"] is not False else "degraded",
            "ssh": {**ka, "slots": self.pool.snapshot(), "direct_sessions": self.pool.direct_sessions},
            **({"tunnels": self.tunnels.snapshot()} if self.tunnels is not None else {}),
        }
        return web.json_response(body)

    async def not_found(self, request: web.Request) -> web.Response:
        return error_response(404, f"no route {request.path}: the OpenAI API is under /v1/", "not_found")

    async def list_models(self, request: web.Request) -> web.Response:
        self.identify(request)
        return web.json_response({"object": "list", "data": await self.models.get()})

    async def get_model(self, request: web.Request) -> web.Response:
        self.identify(request)
        model_id = request.match_info["model_id"]
        for model in await self.models.get():
            if model["id"] == model_id:
                return web.json_response(model)
        raise _Refused(404, f"The model '{model_id}' does not exist", "model_not_found")

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        user = self.identify(request)
        try:
            path = protocol.check_path(request.raw_path)
        except protocol.ProtocolError as e:
            raise _Refused(400, str(e), "invalid_path") from None
        service = request.headers.get("inference-service") or None
        ctype = request.content_type
        body: bytes | None = b""
        strip_usage = False
        if request.body_exists:
            if service and "json" not in ctype:
                body = None  # streamed from the client to ssh's stdin as it arrives
            else:
                body = await request.read()
                doc, asked_usage = protocol.prepare_body(body)
                if doc is not None:
                    model = doc.get("model")
                    if service is None and isinstance(model, str):
                        service = model
                    if not asked_usage:
                        body, strip_usage = protocol.inject_usage(doc), True
                elif service is None and ctype == "multipart/form-data":
                    m = _MULTIPART_MODEL.search(body)
                    service = m.group(1).decode("latin-1").strip() if m else None
        if not service and request.method == "GET" and request.path == USAGE_PATH:
            service = USAGE_SERVICE  # the caller's own usage: answered by the login node, no model
        if not service:
            raise _Refused(
                400,
                "no model: name it in the body's 'model' or the inference-service header",
                "missing_model",
            )
        try:
            protocol.check_service(service)
            command = protocol.build_command(
                protocol.inference_id(request.headers.get("inference-id")),
                user,
                service,
                path,
                request.method,
                protocol.forwarded_headers(request.headers.items()),
            )
        except protocol.ProtocolError as e:
            raise _Refused(400, str(e), "invalid_request") from None
        iid = command.split("\n", 1)[0]
        where = f"inference={iid} user={user} service={service} {request.method} {path}"
        try:
            sess: Session | TunnelStream | None = None
            if self.tunnels is not None:
                sess = await self.tunnels.stream(command)
            if sess is None:
                sess = await self.pool.start(command, stdin=True)
        except SSHError as e:
            log.error("ssh failed: %s: %s", where, e)
            raise _Refused(502, f"cannot reach the cluster: {e}", "bad_gateway") from None
        return await self._exchange(request, sess, body, strip_usage, where, t0)

    async def _exchange(
        self,
        request: web.Request,
        sess: Session | TunnelStream,
        body: bytes | None,
        strip_usage: bool,
        where: str,
        t0: float,
    ) -> web.StreamResponse:
        """Send the body, read the answer's head, stream the rest; always reap ssh."""
        sent_in: list[int] = [0]
        feeder: asyncio.Task[None] | None = None
        if isinstance(sess, TunnelStream) and body is not None:
            # The body is in memory already: its frames go out now, in the same write to
            # ssh as the stream's OPEN (a task would send them in a write of their own).
            with contextlib.suppress(BrokenPipeError):  # the session died meanwhile: read below
                if body:
                    sess.stdin.write(body)
                    sent_in[0] = len(body)
                sess.stdin.close()
        else:
            feeder = asyncio.create_task(self._feed(sess, request, body, sent_in))
        outcome, status, sent, first = "error", 0, 0, None
        resp: web.StreamResponse | None = None
        # An event stream is whole once [DONE] went out; clients may hang up then,
        # before the cluster side has exited: that is not an abort.
        delivered = False
        try:
            try:
                head, data = await self._read_head(sess)
            except _Refused as e:
                status = e.status
                log.error("%s: %s", where, e.message)
                return error_response(e.status, e.message, e.code)
            first = time.monotonic() - t0
            status = head.status
            resp = web.StreamResponse(status=head.status, reason=head.reason or None)
            resp.headers.extend(CIMultiDict(head.headers))
            await resp.prepare(request)
            event_stream = (head.header("content-type") or "").startswith("text/event-stream")
            stripper = UsageStripper() if strip_usage and event_stream else None
            timeout = self.cfg.timeout
            recent = b""
            while True:
                if data:
                    out = stripper.feed(data) if stripper is not None else data
                    if out:
                        await resp.write(out)
                        sent += len(out)
                        if event_stream:
                            recent = (recent + out)[-32:]
                            delivered = b"data: [DONE]" in recent
                try:
                    async with asyncio.timeout(timeout):
                        data = await sess.stdout.read(_CHUNK)
                except TimeoutError:
                    outcome = "timeout"
                    log.error("%s: no data from the cluster for %g s; answer cut", where, timeout)
                    break
                if not data:
                    outcome = "ok"
                    if isinstance(sess, TunnelStream) and sess.outcome in (None, "aborted"):
                        outcome = "cut"  # the tunnel session died under it: no clean end
                        log.error("%s: %s; answer cut", where, sess.error or "the tunnel stream was aborted")
                    break
            if stripper is not None:
                tail = stripper.flush()
                if tail:
                    await resp.write(tail)
                    sent += len(tail)
            if outcome == "ok":
                await resp.write_eof()
            return resp
        except (ConnectionResetError, asyncio.CancelledError) as e:
            outcome = "ok" if delivered else "client-gone"
            if isinstance(e, asyncio.CancelledError) or resp is None:
                raise
            return resp
        finally:
            if feeder is not None:
                feeder.cancel()
            if outcome != "ok":
                sess.kill()
            rc = await asyncio.shield(sess.close())
            if outcome == "ok" and rc not in (0, None):
                outcome = f"rc={rc}"
            level = logging.INFO if outcome == "ok" else logging.WARNING
            log.log(
                level,
                "%s -> %s %s in=%d out=%d first_byte=%s total=%.0fms slot=%s",
                where,
                status,
                outcome,
                sent_in[0],
                sent,
                f"{first * 1000:.0f}ms" if first is not None else "-",
                (time.monotonic() - t0) * 1000,
                f"tunnel:{sess.id}"
                if isinstance(sess, TunnelStream)
                else (sess.slot.index if sess.slot is not None else "direct"),
            )
            if outcome == "cut" and request.transport is not None:
                # The client must see a broken answer, not a complete one (aiohttp would end
                # the chunked body cleanly); closed only now, since closing cancels this handler.
                request.transport.close()

    async def _feed(
        self, sess: Session | TunnelStream, request: web.Request, body: bytes | None, sent: list[int]
    ) -> None:
        """The request body to ssh's stdin, then EOF (the cluster reads until end of file)."""
        w = sess.stdin
        if w is None:
            return
        try:
            if body is not None:
                if body:
                    w.write(body)
                    sent[0] += len(body)
                    await w.drain()
            else:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    w.write(chunk)
                    sent[0] += len(chunk)
                    await w.drain()
            w.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the cluster answered without reading it all (e.g. a 400)

    async def _read_head(self, sess: Session | TunnelStream) -> tuple[protocol.ResponseHead, bytes]:
        buf = b""
        try:
            async with asyncio.timeout(self.cfg.timeout):
                while True:
                    chunk = await sess.stdout.read(_CHUNK)
                    if not chunk:
                        break
                    sess.got_output = True
                    buf += chunk
                    parsed = protocol.parse_head(buf)
                    if parsed is not None:
                        return parsed
                    if len(buf) > _MAX_HEAD:
                        raise protocol.BadAnswer("the answer's head is longer than 64 KiB")
        except TimeoutError:
            raise _Refused(
                504, f"no answer from the cluster within {self.cfg.timeout:g} s", "gateway_timeout"
            ) from None
        except protocol.BadAnswer as e:
            raise _Refused(502, str(e), "bad_gateway") from None
        rc = await sess.wait(5.0)
        detail = sess.stderr_text()
        if rc == SSH_FAILED or not buf:
            msg = f"SSH to the cluster failed (exit status {rc})" + (f": {detail}" if detail else "")
            raise _Refused(502, msg, "bad_gateway")
        raise _Refused(502, "the cluster closed the connection before the answer's head", "bad_gateway")


# -- running it -------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serving(cfg: ProxyConfig, sock: socket.socket | None = None) -> AsyncIterator[tuple[Proxy, int]]:
    """Run the proxy on ``sock`` (or a new one) until the block exits; yields it and its port."""
    proxy = Proxy(cfg)
    sock = sock or bind_socket(cfg.host, cfg.port)
    runner = web.AppRunner(proxy.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield proxy, sock.getsockname()[1]
    finally:
        await runner.cleanup()


def serve(cfg: ProxyConfig) -> None:
    """Run until SIGINT/SIGTERM (the ``saia-ctl proxy`` command)."""
    sock = bind_socket(cfg.host, cfg.port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serving(cfg, sock) as (proxy, port):
            log.log(
                max(logging.INFO, log.getEffectiveLevel()),  # always shown: says which port --port 0 got
                "listening on http://%s:%d; SSH to %s (pool %d, control dir %s)",
                cfg.host,
                port,
                cfg.ssh_host,
                cfg.pool_size,
                proxy.pool.control_dir,
            )
            await stop.wait()
            log.info("stopping")

    asyncio.run(main())


@contextlib.contextmanager
def running_in_thread(cfg: ProxyConfig) -> Iterator[tuple[Proxy, str]]:
    """The proxy on its own event loop in a thread; yields it and its base URL (tests, bench, demo)."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with serving(cfg) as (proxy, port):
                ready["proxy"], ready["port"] = proxy, port
                started.set()
                await stop.wait()
        except BaseException as e:
            ready["error"] = e
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(30)
    if "error" in ready:
        raise ready["error"]
    try:
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        yield ready["proxy"], f"http://{host}:{ready['port']}"
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


__all__ = ["Proxy", "error_response", "running_in_thread", "serve", "serving"]
