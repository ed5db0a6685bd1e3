"""The request path's handler: what ``cloud_interface.sh`` runs for every SSH
session of the cloud proxy (``docs/wire-protocol.md``), through ``entry.py``
(or in a forked child of the optional forwarder).

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
    BackendError,
    ClientGone,
    Delivery,
    connect,
    find_usage,
    make_poller,
    read_answer_head,
    release_stdout,
    request_head,
    say_stderr,
    stream_body,
    write_all,
)
from .log import Log

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


def _choose(jobs: list[rawdb.Row]) -> list[rawdb.Row]:
    """Candidates in order of preference: the least in flight first, ties at random."""
    if len(jobs) < 2:
        return jobs
    least = min(j["in_flight"] for j in jobs)
    best = [j for j in jobs if j["in_flight"] == least]
    first = best[int.from_bytes(os.urandom(4), "little") % len(best)]
    return [first] + [j for j in jobs if j is not first]


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


def _send_body(
    sock: _socket.socket,
    req: wire.ParsedRequest,
    stdin: int,
    make_head: Callable[[tuple[str, str] | None], bytes],
    rq: Request,
) -> None:
    """Send the request head and body: inline with Content-Length, stdin chunked
    (or with the client's Content-Length). Stops quietly if the backend stops reading."""
    try:
        if req.body is not None:
            framing = (
                ("Content-Length", str(len(req.body))) if req.body or req.method in BODY_METHODS else None
            )
            sock.sendall(make_head(framing) + req.body)
            return
        try:
            first = os.read(stdin, _RECV)
        except OSError:
            first = b""
        if not first:
            sock.sendall(make_head(("Content-Length", "0") if req.method in BODY_METHODS else None))
            return
        if req.content_length is not None:
            left = req.content_length
            piece = first[:left]
            sock.sendall(make_head(("Content-Length", str(left))) + piece)
            rq.bytes_in += len(piece)
            left -= len(piece)
            while left > 0:
                data = os.read(stdin, min(_RECV, left))
                if not data:
                    break
                sock.sendall(data)
                rq.bytes_in += len(data)
                left -= len(data)
            return
        sock.sendall(make_head(("Transfer-Encoding", "chunked")) + b"%x\r\n%s\r\n" % (len(first), first))
        rq.bytes_in += len(first)
        while True:
            try:
                data = os.read(stdin, _RECV)
            except OSError:
                data = b""
            if not data:
                sock.sendall(b"0\r\n\r\n")
                return
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            rq.bytes_in += len(data)
    except OSError:
        # The backend stopped reading (answered early, closed, or stalled past the
        # timeout): what it answered, or why not, is found when reading its answer.
        return


def _forward(
    settings: Settings,
    req: wire.ParsedRequest,
    candidates: list[rawdb.Row],
    stdin: int,
    stdout: int,
    rq: Request,
    log: Log,
) -> None:
    sock = None
    failure: BackendError | None = None
    job = candidates[0]
    for job in candidates:
        rq.job_id = job["id"]
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
    try:
        node, port, secret = job["node"], job["port"], job["secret"]

        def head_for(framing: tuple[str, str] | None) -> bytes:
            return request_head(req.method, req.path, node, port, req.headers, secret, framing)

        timeout = settings.backend_timeout
        sock.settimeout(timeout)  # sending a big body to a busy backend may take a while
        _send_body(sock, req, stdin, head_for, rq)
        poller = make_poller(sock.fileno(), stdout)
        try:
            answer, first = read_answer_head(sock, stdout, poller, timeout, time.time() + timeout)
        except BackendError as e:
            _answer_error(stdout, rq, e.status, e.message)
            return
        _deliver(sock, answer, first, req, stdout, poller, timeout, rq)
    finally:
        sock.close()


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
    if rq.admission is not None and rq.admission.headers:
        from .admission import with_headers

        write_all(stdout, with_headers(answer.head, rq.admission.headers))
    else:
        write_all(stdout, answer.head)
    no_body = req.method == "HEAD" or answer.status in (204, 304)
    stream_body(sock, answer, stdout, poller, timeout, no_body, rq.delivery)
    if not rq.delivery.complete:
        rq.outcome = "error"
        rq.error = rq.delivery.error
    else:
        rq.outcome = "ok" if answer.status < 400 else "error"


def _record_start(
    conn: rawdb.Connection, req: wire.ParsedRequest, rq: Request, now: float
) -> tuple[list[rawdb.Row], str, float | None]:
    """Pick the candidate jobs and insert the request row (and the demand if no job is ready)."""
    jobs = _choose(store.ready_jobs(conn, req.service_id))
    rq.job_id = jobs[0]["id"] if jobs else None
    rq.row, recorded = store.record_start(
        conn,
        inference_id=req.inference_id,
        user_id=req.user_id,
        service_id=req.service_id,
        job_id=rq.job_id,
        method=req.method,
        path=req.path,
        started_at=now,
        handler_host=_socket.gethostname(),
        handler_pid=os.getpid(),
        bytes_in=rq.bytes_in,
    )
    previous_demand = store.record_demand(conn, req.service_id, now) if not jobs else None
    return jobs, recorded, previous_demand


def _admit(
    conn: rawdb.Connection, settings: Settings, req: wire.ParsedRequest, rq: Request, now: float
) -> bytes | None:
    """Decide on the request's limits (``admission.py``); a refused request is recorded
    here (status 429, or 503 if a figure is missing; nothing consumed) and its answer returned."""
    from . import admission

    d = admission.admit(conn, req.user_id, req.service_id, now, settings.raw("SAIA_ACCOUNTING_TZ"))
    rq.admission = d
    if d.refused is None:
        return None
    message = d.message()
    extra: dict[str, object] = {
        "limit": d.refused.kind,
        "subject": d.refused.subject,
        "retry_after": d.retry_after,
    }
    if d.refused.service_id:
        extra["service"] = d.refused.service_id
    data = wire.error_response(d.status, message, tuple(d.headers), extra)
    rq.status, rq.error = d.status, message
    row, _recorded = store.record_start(
        conn,
        inference_id=req.inference_id,
        user_id=req.user_id,
        service_id=req.service_id,
        job_id=None,
        method=req.method,
        path=req.path,
        started_at=now,
        handler_host=_socket.gethostname(),
        handler_pid=os.getpid(),
        bytes_in=rq.bytes_in,
    )
    store.record_end(
        conn,
        row,
        job_id=None,
        first_byte_at=None,
        ended_at=now,
        status=d.status,
        outcome="error",
        bytes_in=rq.bytes_in,
        bytes_out=len(data) - data.index(b"\r\n\r\n") - 4,
        error=message,
    )
    return data


USAGE_PATH = "/v1/usage"


def answer_usage(req: wire.ParsedRequest, settings: Settings, stdout: int, log: Log) -> int:
    """``GET /v1/usage``: the caller's month so far and their limits (``saia_ctl.usage``),
    answered here for any service id: no backend, no row, nothing counted against a limit."""
    import json

    try:
        from ..usage import usage_of_user  # stdlib only, unless the month was rolled up

        doc = usage_of_user(settings, req.user_id, settings.accounting_tz)
    except Exception as e:  # the database or the zone: one line for the client, the rest in the log
        log.bug(f"usage of {req.user_id}: {type(e).__name__}: {e}", e)
        write_all(stdout, wire.error_response(503, "usage is unavailable; try again later"))
        return 1
    body = json.dumps(doc).encode("utf-8")
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    write_all(stdout, head.encode("ascii") + body)
    return 0


def handle_request(req: wire.ParsedRequest, settings: Settings, stdin: int, stdout: int, log: Log) -> int:
    global _closing
    if req.method == "GET" and req.path.partition("?")[0] == USAGE_PATH:
        return answer_usage(req, settings, stdout, log)
    rq = Request()
    try:
        conn = rawdb.connect(
            settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
        )
    except rawdb.DatabaseUnavailable as e:
        log(f"503 {e}")
        _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
        return 1
    try:
        try:
            hold = store.service_hold_time(conn, req.service_id)
        except rawdb.Error as e:
            log(f"503 cannot read services: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        if hold is None:
            _answer_error(stdout, rq, 404, f"service {req.service_id} is not configured")
            return 1
        now = time.time()
        rq.bytes_in = len(req.body) if req.body is not None else 0
        refusal: bytes | None = None
        try:
            with rawdb.immediate(conn):
                if store.any_limits(conn):  # admission in the transaction that records the request
                    refusal = _admit(conn, settings, req, rq, now)
                if refusal is None:
                    jobs, recorded, previous_demand = _record_start(conn, req, rq, now)
        except rawdb.Error as e:
            rq.row = None
            log(f"503 cannot record the request {req.inference_id}: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        if refusal is not None:
            log(f"{rq.status} {req.inference_id}: {rq.error}")
            write_all(stdout, refusal)
            return 1
        log.tag = f"id={recorded}"
        try:
            if not jobs:
                if previous_demand is None or now - previous_demand >= DEMAND_RESPAWN:
                    from .spawn import spawn_tick  # only without a ready job

                    spawn_tick(settings, False, log)
                jobs = _choose(_hold(conn, settings, req.service_id, hold, stdout, log)) if hold > 0 else []
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
                _forward(settings, req, jobs, stdin, stdout, rq, log)
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
        _finish(conn, rq, log)
        return 0 if rq.outcome == "ok" else 1
    finally:
        conn.close()


def _finish(conn: rawdb.Connection, rq: Request, log: Log) -> None:
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
        with rawdb.immediate(conn):
            store.record_end(conn, rq.row, **record)  # type: ignore[arg-type]
            if rq.admission is not None and (tokens_in or tokens_out):
                from .admission import add_tokens

                add_tokens(conn, rq.admission, (tokens_in or 0) + (tokens_out or 0))
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
