"""The request path: the program ``cloud_interface.sh`` runs for every SSH
session of the cloud proxy (``shared/spec/wire-protocol.md``).

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
"""

from __future__ import annotations

import _socket
import os
import time

from .hotpath import store, wire
from .hotpath.forward import (
    Answer,
    BackendError,
    ClientGone,
    Delivery,
    connect,
    find_usage,
    make_poller,
    read_answer_head,
    request_head,
    stream_body,
    write_all,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import select
    from collections.abc import Callable

    from .settings import Settings

_signal = __import__("_signal")  # `signal` imports enum (~4 ms); the C module is enough

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class Log:
    """Appends one line per event to ``$SAIA_HOME/logs/route.log``."""

    def __init__(self, home: str | None, tag: str = "") -> None:
        self.path = os.path.join(home, "logs", "route.log") if home else None
        self.tag = tag

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {self.tag} "
            f"{message.replace(chr(10), ' ')}\n"
        )
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError:
                return
        except OSError:
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)


def release_stdout(stdout: int) -> None:
    """End the answer: point ``stdout`` at /dev/null, so the client sees EOF while
    the descriptor stays taken (closing it would let the next open(), e.g.
    SQLite's journal, become fd 1)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(null, stdout)
    except OSError:
        pass
    finally:
        os.close(null)


def _stderr(message: str) -> None:
    try:
        os.write(2, f"saia-ctl: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


# --- background ticks ------------------------------------------------------


def spawn_detached(settings: Settings, args: list[str], log_name: str, log: Log, what: str) -> None:
    """Start ``python -m ARGS...`` fully detached (the scheduler, the forwarder).

    New session; stdin /dev/null, stdout/stderr ``logs/LOG_NAME``: nothing of
    the SSH channel is held, so the session ends when this process exits.
    """
    python = settings.python
    env = dict(os.environ)
    env["SAIA_HOME"] = settings.home
    env["PYTHONPATH"] = CHECKOUT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_dir = settings.log_dir
    try:
        os.makedirs(log_dir, exist_ok=True)
        os.posix_spawn(
            python,
            [python, "-m", *args],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    os.path.join(log_dir, log_name),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o640,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigdef=(_signal.SIGPIPE, _signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM),
        )
    except OSError as e:
        log(f"cannot start {what} with {python}: {e}")


def spawn_tick(settings: Settings, if_due: bool, log: Log) -> None:
    """Start ``python -m saia_ctl.scheduler [--if-due]`` detached, logging to ``logs/tick.log``."""
    args = ["saia_ctl.scheduler", "--if-due"] if if_due else ["saia_ctl.scheduler"]
    spawn_detached(settings, args, "tick.log", log, "a tick")


# --- control commands ------------------------------------------------------


def keep_alive(settings: Settings, stdout: int, log: Log) -> int:
    """``OK`` at once; then a throttled tick if the last one began long enough ago."""
    try:
        write_all(stdout, b"OK\n")
    except ClientGone:
        pass
    release_stdout(stdout)
    if settings.raw("SAIA_FORWARDER").lower() == "on":
        try:
            from . import forwarder

            forwarder.ensure(settings, log)
        except Exception as e:  # the forwarder is never required
            log(f"keep-alive: forwarder: {type(e).__name__}: {e}")
    try:
        conn = store.connect(settings.db_path, settings.journal_mode, settings.busy_timeout)
        try:
            last = store.last_tick_at(conn)
        finally:
            conn.close()
    except (store.StoreError, store.Error) as e:
        log(f"keep-alive: cannot read the last tick: {e}")
        return 0
    if last is None or time.time() - last >= settings.tick_interval:
        spawn_tick(settings, True, log)
    return 0


def status_document(conn: store.Connection) -> dict[str, object]:
    """The `status` answer: enabled services with their live state."""
    import json

    services, counts = store.status_rows(conn)
    per: dict[str, dict[str, int]] = {}
    for sid, state, n in counts:
        per.setdefault(str(sid), {})[str(state)] = int(n)
    out: list[dict[str, object]] = []
    for sid, name, owned_by, inp, outp, minimum, maximum, target in services:
        c = per.get(str(sid), {})
        ready = c.get("ready", 0)
        starting = c.get("pending", 0) + c.get("starting", 0) + c.get("submitting", 0)
        lists = []
        for text in (inp, outp):
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                value = []
            lists.append(value if isinstance(value, list) else [])
        out.append(
            {
                "id": sid,
                "name": name,
                "owned_by": owned_by,
                "input": lists[0],
                "output": lists[1],
                "state": "ready" if ready else ("starting" if starting else "offline"),
                "ready": ready,
                "starting": starting,
                "draining": c.get("draining", 0),
                "target": int(target),
                "minimum_number_instances": int(minimum),
                "maximum_number_instances": int(maximum),
            }
        )
    return {"services": out}


def status(settings: Settings, stdout: int, log: Log) -> int:
    import json

    try:
        conn = store.connect(settings.db_path, settings.journal_mode, settings.busy_timeout)
        try:
            doc = status_document(conn)
        finally:
            conn.close()
    except (store.StoreError, store.Error) as e:
        log(f"status: {e}")
        doc = {"services": [], "error": "the state database is unavailable"}
        write_all(stdout, (json.dumps(doc) + "\n").encode("utf-8"))
        return 1
    write_all(stdout, (json.dumps(doc) + "\n").encode("utf-8"))
    return 0


# --- requests --------------------------------------------------------------


def _choose(jobs: list[tuple[int, str, int, str, int]]) -> list[tuple[int, str, int, str, int]]:
    """Candidates in order of preference: the least in flight first, ties at random."""
    if len(jobs) < 2:
        return jobs
    least = min(j[4] for j in jobs)
    best = [j for j in jobs if j[4] == least]
    first = best[int.from_bytes(os.urandom(4), "little") % len(best)]
    return [first] + [j for j in jobs if j is not first]


def retry_after(conn: store.Connection, service_id: str, now: float) -> tuple[int, str]:
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
    conn: store.Connection,
    settings: Settings,
    service_id: str,
    hold: float,
    stdout: int,
    log: Log,
) -> list[tuple[int, str, int, str, int]]:
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
    candidates: list[tuple[int, str, int, str, int]],
    stdin: int,
    stdout: int,
    rq: Request,
    log: Log,
) -> None:
    sock = None
    failure: BackendError | None = None
    job = candidates[0]
    for job in candidates:
        rq.job_id = job[0]
        try:
            sock = connect(job[1], job[2], settings.connect_timeout)
            break
        except BackendError as e:
            failure = e
            log(f"job {job[0]}: {e.message}")
    if sock is None:
        assert failure is not None
        _answer_error(stdout, rq, failure.status, failure.message)
        return
    try:
        _, node, port, secret, _ = job

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
    write_all(stdout, answer.head)
    no_body = req.method == "HEAD" or answer.status in (204, 304)
    stream_body(sock, answer, stdout, poller, timeout, no_body, rq.delivery)
    if not rq.delivery.complete:
        rq.outcome = "error"
        rq.error = rq.delivery.error
    else:
        rq.outcome = "ok" if answer.status < 400 else "error"


def handle_request(req: wire.ParsedRequest, settings: Settings, stdin: int, stdout: int, log: Log) -> int:
    global _closing
    rq = Request()
    try:
        conn = store.connect(settings.db_path, settings.journal_mode, settings.busy_timeout)
    except store.StoreError as e:
        log(f"503 {e}")
        _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
        return 1
    try:
        try:
            hold = store.service_hold_time(conn, req.service_id)
        except store.Error as e:
            log(f"503 cannot read services: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        if hold is None:
            _answer_error(stdout, rq, 404, f"service {req.service_id} is not configured")
            return 1
        now = time.time()
        rq.bytes_in = len(req.body) if req.body is not None else 0
        try:
            with store.immediate(conn):
                jobs = _choose(store.ready_jobs(conn, req.service_id))
                rq.job_id = jobs[0][0] if jobs else None
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
        except store.Error as e:
            rq.row = None
            log(f"503 cannot record the request {req.inference_id}: {e}")
            _answer_error(stdout, rq, 503, "the accounting database is unavailable; try again later")
            return 1
        log.tag = f"id={recorded}"
        try:
            if not jobs:
                if previous_demand is None or now - previous_demand >= DEMAND_RESPAWN:
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
        except Exception as e:
            rq.outcome, rq.error = "error", f"internal error: {type(e).__name__}: {e}"
            log(rq.error)
            _stderr(rq.error)
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


def _finish(conn: store.Connection, rq: Request, log: Log) -> None:
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
        with store.immediate(conn):
            store.record_end(conn, rq.row, **record)  # type: ignore[arg-type]
    except store.Error as e:
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
        from .settings import Settings, SettingsError

        try:
            settings = Settings(environ=environ)
            # Every value used below, checked now: a bad one is a clean 503, not a crash later.
            for value in (settings.db_path, settings.journal_mode, settings.busy_timeout):
                assert value is not None
            for value in (settings.connect_timeout, settings.backend_timeout, settings.tick_interval):
                assert value is not None
        except SettingsError as e:
            log(f"settings: {e}")
            _stderr(f"bad settings: {e}")
            if parsed == "keep-alive":
                write_all(stdout, b"OK\n")
            else:
                write_all(stdout, wire.error_response(503, "the request path is misconfigured"))
            return 1
        if parsed == "keep-alive":
            return keep_alive(settings, stdout, log)
        if parsed == "status":
            return status(settings, stdout, log)
        assert isinstance(parsed, wire.ParsedRequest)
        return handle_request(parsed, settings, stdin, stdout, log)
    except (ClientGone, Interrupted):
        return 1
    except Exception as e:  # never a traceback on stdout
        log(f"internal error: {type(e).__name__}: {e}")
        _stderr(f"internal error: {type(e).__name__}")
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
