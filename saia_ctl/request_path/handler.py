"""The request path's handler: what ``cloud_interface.sh`` runs for every SSH
session of the cloud proxy (``docs/wire-protocol.md``), through ``entry.py``
(or in a thread of a ``tunnel`` session, ``tunnel.py``).

One process per request, so start-up cost is every user's latency and the
login node's CPU: standard library only (never SQLAlchemy or Typer), and only
what the first byte needs is imported before it (``json``/``re`` come after
the answer, ``socket``/``signal``/``http.client`` not at all: their C modules
``_socket``/``_signal`` do the work without ``enum`` and the email package).

Per request: validate (400/404 without touching a backend or writing
anything); one short write transaction that picks the least-loaded ready job
and inserts the request row (plus the service's demand when no job is
ready); forward to ``http://{node}:{port}`` with the job's secret as bearer
token and stream the answer back as ``curl -i -N`` prints it; one short
write transaction that closes the row with status, outcome, bytes and
tokens. The row is closed on every path: client gone (EPIPE, closed stdout,
SIGHUP/SIGINT) -> ``aborted``; backend refused/timed out/broke off, or a
4xx/5xx answer -> ``error``. A SIGKILLed handler's row is closed by the tick.

Decisions (see the README's request path section):
- No ready job: record demand, start a tick at once (detached), hold the
  request up to the service's ``request_hold_time`` polling the jobs table,
  then forward or answer 503 with ``Retry-After`` (median past start time).
- A re-used inference id is recorded as ``ID~2``, ``ID~3``... (never lost, never
  a 409: the request is real and must be accounted).
- If the start row cannot be written (database missing, read-only, full,
  locked past the busy timeout) the request is answered 503 and not served:
  accounting is exact or the request does not run. If only the end row
  fails, the full record goes to ``logs/route.log`` and the tick closes the row.
- A bug (an unexpected exception) still gets the client one line (a 502
  answer, or nothing once the answer began) and its traceback goes to
  ``logs/route.log``.
"""

from __future__ import annotations

import _socket
import os
import time

from .. import rawdb
from . import store, wire
from .forward import (
    Answer,
    BackendClosed,
    BackendError,
    Backends,
    ClientGone,
    Delivery,
    connect,
    find_usage,
    make_poller,
    read_answer_head,
    release_stdout,
    request_head,
    say_stderr,
    send_watching,
    stream_body,
    write_all,
)
from .log import Log
from .records import RECORDS, Records, choose

TYPE_CHECKING = False
if TYPE_CHECKING:
    import select
    from collections.abc import Callable

    from ..settings import Settings
    from . import admission

_signal = __import__("_signal")  # `signal` imports enum (~4 ms); the C module is enough

HOLD_POLL = 0.15  # seconds between two looks at the jobs table while holding
DEMAND_RESPAWN = 2.0  # a request with no backend starts a tick unless one was asked for this recently
DEFAULT_RETRY_AFTER = 60
BODY_METHODS = ("POST", "PUT", "PATCH")
REPLAY_MAX = 1 << 20  # bytes of a request kept to send again over a new connection (tunnel)
_RECV = 65536


class Interrupted(Exception):
    """A signal ended the request (SIGHUP, SIGINT, SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_closing = False  # set while the row is being closed: signals no longer interrupt


def _on_signal(signum: int, _frame: object) -> None:
    if not _closing:
        raise Interrupted(signum)


def install_signal_handlers() -> None:
    for name in ("SIGHUP", "SIGINT", "SIGTERM"):
        _signal.signal(getattr(_signal, name), _on_signal)


# --- requests --------------------------------------------------------------


def retry_after(conn: rawdb.Connection, service_id: str, now: float) -> tuple[int, str]:
    """(seconds, phase) for a 503: phase is pending, starting or not started."""
    live = store.live_states(conn, service_id)
    if "starting" in live:
        phase = "starting"
    elif "pending" in live or "submitting" in live:
        phase = "pending"
    else:
        phase = "not started"
    times = sorted(store.start_times(conn, service_id))
    if not times:
        return DEFAULT_RETRY_AFTER, phase
    mid = len(times) // 2
    median = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    waiting = [first for state, (_, first) in live.items() if state in ("submitting", "pending", "starting")]
    left = median - (now - min(waiting)) if waiting else median
    return max(5, int(left + 0.999)), phase


class Request:
    """What the row of one request will say when it is closed."""

    def __init__(self) -> None:
        self.row: int | None = None
        self.job_id: int | None = None
        self.first_byte_at: float | None = None
        self.status: int | None = None
        self.bytes_in = 0
        self.head_sent = False
        self.delivery = Delivery()
        self.outcome = "error"
        self.error: str | None = None
        self.admission: admission.Decision | None = None  # None: no limit configured


def _answer_error(
    stdout: int,
    rq: Request,
    status: int,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
    extra: dict[str, object] | None = None,
) -> None:
    """Our own error answer; only possible before any byte of a backend answer was sent."""
    rq.status = status
    rq.error = message
    rq.outcome = "error"
    if rq.head_sent:
        return
    data = wire.error_response(status, message, headers, extra)
    rq.head_sent = True
    write_all(stdout, data)
    rq.delivery.bytes_out = len(data) - data.index(b"\r\n\r\n") - 4


def _hold(
    conn: rawdb.Connection,
    settings: Settings,
    service_id: str,
    hold: float,
    stdout: int,
    log: Log,
) -> list[rawdb.Row]:
    """Wait up to ``hold`` seconds for a ready job, nothing sent meanwhile."""
    import select

    poller = select.poll()
    try:
        poller.register(stdout, 0)
    except (OSError, ValueError):
        pass
    deadline = time.time() + hold
    next_tick = time.time() + max(settings.tick_interval, 1.0)
    while True:
        left = deadline - time.time()
        if left <= 0:
            return []
        for _fd, ev in poller.poll(min(HOLD_POLL, left) * 1000):
            if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise ClientGone()
        jobs = store.ready_jobs(conn, service_id)
        if jobs:
            return jobs
        if time.time() >= next_tick:  # nobody sends keep-alive: keep the ticks coming
            from .spawn import spawn_tick

            spawn_tick(settings, True, log)
            next_tick = time.time() + max(settings.tick_interval, 1.0)


class Link:
    """The backend connection a request goes over. One taken from the kept-alive ones
    that fails before any answer (the backend closed it meanwhile) is replaced, once,
    by a new one, and what was sent is sent again (at most ``REPLAY_MAX`` bytes)."""

    __slots__ = ("node", "out_fd", "parts", "port", "size", "sock", "timeouts")

    def __init__(
        self,
        sock: _socket.socket,
        reused: bool,
        node: str,
        port: int,
        timeouts: tuple[float, float],
        out_fd: int,
    ) -> None:
        self.sock = sock
        self.out_fd = out_fd  # the client's side: a send to a stuck backend ends when it goes away
        self.node, self.port = node, port
        self.timeouts = timeouts  # (connect, backend)
        self.parts: list[bytes] | None = [] if reused else None  # what was sent, while it may be replaced
        self.size = 0

    def send(self, data: bytes) -> None:
        if self.parts is not None:
            self.size += len(data)
            self.parts.append(data)
            if self.size > REPLAY_MAX:
                self.parts = None
        try:
            send_watching(self.sock, data, self.out_fd, self.timeouts[1])
        except OSError:
            if not self.replace():
                raise

    def replace(self) -> bool:
        """A new connection with what was sent on it; False when that is not possible.
        BackendError when the new connection cannot be made."""
        if self.parts is None:
            return False
        data, self.parts = b"".join(self.parts), None
        self.sock.close()
        self.sock = connect(self.node, self.port, self.timeouts[0])
        self.sock.settimeout(self.timeouts[1])
        self.sock.sendall(data)
        return True


def _send_body(
    send: Callable[[bytes], None],
    req: wire.ParsedRequest,
    stdin: int,
    make_head: Callable[[tuple[str, str] | None], bytes],
    rq: Request,
) -> bool:
    """Send the request head and body: inline with Content-Length, stdin chunked
    (or with the client's Content-Length). Stops quietly if the backend stops reading
    (then False: the connection cannot carry another request)."""
    try:
        if req.body is not None:
            framing = (
                ("Content-Length", str(len(req.body))) if req.body or req.method in BODY_METHODS else None
            )
            send(make_head(framing) + req.body)
            return True
        try:
            first = os.read(stdin, _RECV)
        except OSError:
            first = b""
        if not first:
            send(make_head(("Content-Length", "0") if req.method in BODY_METHODS else None))
            return True
        if req.content_length is not None:
            left = req.content_length
            piece = first[:left]
            send(make_head(("Content-Length", str(left))) + piece)
            rq.bytes_in += len(piece)
            left -= len(piece)
            while left > 0:
                data = os.read(stdin, min(_RECV, left))
                if not data:
                    break
                send(data)
                rq.bytes_in += len(data)
                left -= len(data)
            return left <= 0
        send(make_head(("Transfer-Encoding", "chunked")) + b"%x\r\n%s\r\n" % (len(first), first))
        rq.bytes_in += len(first)
        while True:
            try:
                data = os.read(stdin, _RECV)
            except OSError:
                data = b""
            if not data:
                send(b"0\r\n\r\n")
                return True
            send(b"%x\r\n%s\r\n" % (len(data), data))
            rq.bytes_in += len(data)
    except OSError:
        # The backend stopped reading (answered early, closed, or stalled past the
        # timeout): what it answered, or why not, is found when reading its answer.
        return False


def _forward(
    settings: Settings,
    req: wire.ParsedRequest,
    candidates: list[rawdb.Row],
    stdin: int,
    stdout: int,
    rq: Request,
    log: Log,
    backends: Backends | None = None,
) -> None:
    """Send the request to the first job that takes the connection and deliver its answer.

    With ``backends`` (the tunnel) the request goes over a kept-alive connection when one
    is idle, and its connection is kept after a clean answer; a kept connection the
    backend closed before answering costs a second try on a new one (what was sent
    is sent again: at most ``REPLAY_MAX`` bytes, else the 502 stands).
    """
    sock = None
    reused = False
    failure: BackendError | None = None
    keep = backends is not None
    job = candidates[0]
    for job in candidates:
        rq.job_id = job["id"]
        if keep:
            assert backends is not None
            sock = backends.take(job["node"], job["port"])
            if sock is not None:
                reused = True
                break
        try:
            sock = connect(job["node"], job["port"], settings.connect_timeout)
            break
        except BackendError as e:
            failure = e
            log(f"job {job['id']}: {e.message}")
    if sock is None:
        assert failure is not None
        _answer_error(stdout, rq, failure.status, failure.message)
        return
    kept = False
    node, port, secret = job["node"], job["port"], job["secret"]
    timeout = settings.backend_timeout
    sock.settimeout(timeout)  # sending a big body to a busy backend may take a while
    link = Link(sock, reused, node, port, (settings.connect_timeout, timeout), stdout)
    try:

        def head_for(framing: tuple[str, str] | None) -> bytes:
            return request_head(req.method, req.path, node, port, req.headers, secret, framing, keep)

        try:
            sent = _send_body(link.send, req, stdin, head_for, rq)
        except BackendError as e:  # a kept connection was closed and a new one cannot be made
            _answer_error(stdout, rq, e.status, e.message)
            return
        while True:
            poller = make_poller(link.sock.fileno(), stdout)
            try:
                answer, first = read_answer_head(link.sock, stdout, poller, timeout, time.time() + timeout)
            except BackendClosed as closed:
                why: BackendError = closed
                try:
                    if link.replace():  # the backend had closed the kept connection: once more
                        continue
                except BackendError as e:
                    why = e
                _answer_error(stdout, rq, why.status, why.message)
                return
            except BackendError as e:
                _answer_error(stdout, rq, e.status, e.message)
                return
            break
        link.parts = None
        _deliver(link.sock, answer, first, req, stdout, poller, timeout, rq)
        if keep and sent and answer.keep_alive and rq.delivery.clean:
            assert backends is not None
            backends.give(node, port, link.sock)
            kept = True
    finally:
        if not kept:
            link.sock.close()


def _deliver(
    sock: _socket.socket,
    answer: Answer,
    first_byte_at: float,
    req: wire.ParsedRequest,
    stdout: int,
    poller: select.poll,
    timeout: float,
    rq: Request,
) -> None:
    rq.first_byte_at = first_byte_at
    rq.status = answer.status
    rq.head_sent = True
    head = answer.head
    if rq.admission is not None and rq.admission.headers:
        from .admission import with_headers

        head = with_headers(answer.head, rq.admission.headers)
    no_body = req.method == "HEAD" or answer.status in (204, 304)
    stream_body(sock, answer, stdout, poller, timeout, no_body, rq.delivery, head)
    if not rq.delivery.complete:
        rq.outcome = "error"
        rq.error = rq.delivery.error
    else:
        rq.outcome = "ok" if answer.status < 400 else "error"


USAGE_PATH = "/v1/usage"


def answer_usage(req: wire.ParsedRequest, settings: Settings, stdout: int, log: Log) -> int:
    """``GET /v1/usage``: the caller's month so far and their limits (``saia_ctl.usage``),
    answered here for any service id: no backend, no row, nothing counted against a limit."""
    try:
        from .. import cjson  # json's C half: `json` imports `re` and `enum`
        from ..usage import usage_of_user  # stdlib only, unless the month was rolled up

        doc = usage_of_user(settings, req.user_id, settings.accounting_tz)
    except Exception as e:  # the database or the zone: one line for the client, the rest in the log
        log.bug(f"usage of {req.user_id}: {type(e).__name__}: {e}", e)
        write_all(stdout, wire.error_response(503, "usage is unavailable; try again later"))
        return 1
    body = cjson.dumps(doc).encode("utf-8")
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    write_all(stdout, head.encode("ascii") + body)
    return 0


def handle_request(
    req: wire.ParsedRequest,
    settings: Settings,
    stdin: int,
    stdout: int,
    log: Log,
    records: Records = RECORDS,
    backends: Backends | None = None,
) -> int:
    """One request, validated: route, forward, record. ``records`` writes the rows (the
    tunnel passes its batcher); ``backends`` keeps backend connections alive (the tunnel)."""
    global _closing
    if req.method == "GET" and req.path.partition("?")[0] == USAGE_PATH:
        return answer_usage(req, settings, stdout, log)
    rq = Request()
    try:
        conn = records.open(settings)
    except rawdb.DatabaseUnavailable as e:
        log(f"503 {e}")
        _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
        return 1
    try:
        try:
            gate = records.gate(conn, req.service_id)
        except rawdb.Error as e:
            log(f"503 cannot read services: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        if gate is None:
            _answer_error(stdout, rq, 404, f"service {req.service_id} is not configured")
            return 1
        hold, admin = gate
        if admin != "active":
            _answer_error(
                stdout,
                rq,
                503,
                f"the model {req.service_id} is {admin} by its operator; try again later",
                (),
                {"service": req.service_id, "state": admin},
            )
            return 1
        now = time.time()
        rq.bytes_in = len(req.body) if req.body is not None else 0
        try:
            start = records.start(conn, req, rq.bytes_in, now, settings.raw("SAIA_ACCOUNTING_TZ"))
        except rawdb.Error as e:
            rq.row = None
            log(f"503 cannot record the request {req.inference_id}: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        rq.admission = start.admission
        if start.refusal is not None:  # refused by a limit, and recorded so: nothing to forward
            assert start.admission is not None
            log(f"{start.admission.status} {req.inference_id}: {start.admission.message()}")
            write_all(stdout, start.refusal)
            return 1
        rq.row, recorded, jobs, previous_demand = start.row, start.recorded, start.jobs, start.previous_demand
        rq.job_id = jobs[0]["id"] if jobs else None
        log.tag = f"id={recorded}"
        try:
            if not jobs and conn is None:  # the tunnel's streams read and write through its batcher
                conn = rawdb.connect(
                    settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
                )
            down = None
            if not jobs:
                assert conn is not None
                down = store.maintenance(conn, req.service_id, now)
            if down is not None:
                seconds = max(1, int(down[0] - time.time() + 0.999))
                until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(down[0]))
                _answer_error(
                    stdout,
                    rq,
                    503,
                    f"the model {req.service_id} is down for maintenance until {until}; retry in about {seconds} s",
                    (("Retry-After", str(seconds)),),
                    {
                        "service": req.service_id,
                        "state": "maintenance",
                        "retry_after": seconds,
                        "until": down[0],
                    },
                )
                jobs = []
            elif not jobs:
                assert conn is not None
                if previous_demand is None or now - previous_demand >= DEMAND_RESPAWN:
                    from .spawn import spawn_tick  # only without a ready job

                    spawn_tick(settings, False, log)
                jobs = choose(_hold(conn, settings, req.service_id, hold, stdout, log)) if hold > 0 else []
                if not jobs:
                    seconds, phase = retry_after(conn, req.service_id, time.time())
                    what = {
                        "starting": "is loading on a node",
                        "pending": "is waiting in the batch queue",
                        "not started": "has no instance running and none starting yet",
                    }[phase]
                    _answer_error(
                        stdout,
                        rq,
                        503,
                        f"the model {req.service_id} {what}; retry in about {seconds} s",
                        (("Retry-After", str(seconds)),),
                        {"service": req.service_id, "state": phase, "retry_after": seconds},
                    )
            if jobs:
                _forward(settings, req, jobs, stdin, stdout, rq, log, backends)
        except ClientGone:
            rq.outcome, rq.error = "aborted", "the client went away (stdout closed)"
        except Interrupted as e:
            if e.signum == _signal.SIGTERM:
                rq.outcome, rq.error = "error", "the handler was terminated (SIGTERM)"
            else:
                rq.outcome, rq.error = "aborted", f"the client went away (signal {e.signum})"
        except Exception as e:  # a bug: one line for the client, the traceback in the log
            rq.outcome, rq.error = "error", f"internal error: {type(e).__name__}: {e}"
            log.bug(rq.error, e)
            say_stderr(rq.error)
            try:
                _answer_error(stdout, rq, 502, "internal error of the request path")
                rq.error = f"internal error: {type(e).__name__}: {e}"
            except ClientGone:
                pass
        _closing = True
        release_stdout(stdout)  # the client has its whole answer; the bookkeeping is ours
        _finish(conn, rq, log, records)
        return 0 if rq.outcome == "ok" else 1
    finally:
        if conn is not None:
            conn.close()


def _finish(conn: rawdb.Connection | None, rq: Request, log: Log, records: Records) -> None:
    if rq.row is None:
        return
    tokens_in, tokens_out = find_usage(rq.delivery.tail) if rq.delivery.tail else (None, None)
    record = {
        "job_id": rq.job_id,
        "first_byte_at": rq.first_byte_at,
        "ended_at": time.time(),
        "status": rq.status,
        "outcome": rq.outcome,
        "bytes_in": rq.bytes_in,
        "bytes_out": rq.delivery.bytes_out,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "error": rq.error,
    }
    try:
        records.end(conn, rq.row, record, rq.admission)
    except rawdb.Error as e:
        import json

        log(f"cannot close request row {rq.row}: {e}; record: {json.dumps(record)}")


# --- entry -----------------------------------------------------------------


def run(command: bytes, *, stdin: int = 0, stdout: int = 1, environ: dict[str, str] | None = None) -> int:
    """Serve one forced command; writes the answer to ``stdout`` and closes it. Never raises.

    ``stdin``/``stdout`` are file descriptors (tests pass pipes or memfds);
    ``environ`` replaces ``os.environ`` for the settings (SAIA_HOME, ...).
    """
    global _closing
    _closing = False
    home = (environ if environ is not None else os.environ).get("SAIA_HOME")
    log = Log(home)
    try:
        try:
            parsed = wire.parse_command(command)
        except wire.WireError as e:
            write_all(stdout, wire.error_response(e.status, e.message))
            return 1
        from ..settings import Settings, SettingsError

        try:
            settings = Settings(environ=environ)  # every value parsed and checked here
        except SettingsError as e:
            log(f"settings: {e}")
            say_stderr(f"bad settings: {e}")
            if parsed == "keep-alive":
                write_all(stdout, b"OK\n")
            else:
                write_all(stdout, wire.error_response(503, "the request path is misconfigured"))
            return 1
        if parsed == "tunnel":
            from . import tunnel  # many requests over this one session (wire protocol section 8)

            return tunnel.serve(settings, stdin, stdout, log, handle_request)
        if parsed == "keep-alive" or parsed == "status":
            from . import control  # not needed by requests: not imported before them

            return (control.keep_alive if parsed == "keep-alive" else control.status)(settings, stdout, log)
        assert isinstance(parsed, wire.ParsedRequest)
        return handle_request(parsed, settings, stdin, stdout, log)
    except (ClientGone, Interrupted):
        return 1
    except Exception as e:  # a bug: never a traceback on stdout; in full in the log
        log.bug(f"internal error: {type(e).__name__}: {e}", e)
        say_stderr(f"internal error: {type(e).__name__}")
        return 1
    finally:
        release_stdout(stdout)
        try:
            os.close(stdout)  # last: while we ran, the number stayed taken (see release_stdout)
        except OSError:
            pass


def main() -> None:
    install_signal_handlers()
    command = os.environb.get(b"SSH_ORIGINAL_COMMAND", b"")
    rc = run(command)
    # Every byte went out through os.write and the database is closed: skip the
    # interpreter's teardown (several ms per request).
    os._exit(rc)


if __name__ == "__main__":
    main()
