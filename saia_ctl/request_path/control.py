"""The control words of the wire protocol (section 1): ``keep-alive`` (answer
at once, then start a throttled tick) and
``status`` (the enabled services with their live state, as JSON)."""

from __future__ import annotations

import time

from .. import rawdb
from . import store
from .forward import ClientGone, release_stdout, write_all
from .log import Log
from .spawn import spawn_tick

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..settings import Settings


def keep_alive(settings: Settings, stdout: int, log: Log) -> int:
    """``OK`` at once; then a throttled tick if the last one began long enough ago."""
    try:
        write_all(stdout, b"OK\n")
    except ClientGone:
        pass
    release_stdout(stdout)
    try:
        conn = rawdb.connect(
            settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
        )
        try:
            last = store.last_tick_at(conn)
        finally:
            conn.close()
    except (rawdb.DatabaseUnavailable, rawdb.Error) as e:
        log(f"keep-alive: cannot read the last tick: {e}")
        return 0
    if last is None or time.time() - last >= settings.tick_interval:
        spawn_tick(settings, True, log)
    return 0


def status_document(conn: rawdb.Connection, now: float | None = None) -> dict[str, object]:
    """The `status` answer: enabled services with their live state and catalogue fields.

    The fields of earlier versions (``state``: ready/starting/offline, counts) are
    kept as they were; the catalogue adds ``phase``, ``admin`` (the operator's state), ``reason``, ``demand``,
    ``contextLength``, ``estimated_wait`` and the config's further keys.
    """
    import json

    from . import catalogue

    at = time.time() if now is None else now
    services, counts = store.status_rows(conn)
    waiting_rows, in_flight_rows = store.status_extra(conn)
    per: dict[str, dict[str, int]] = {}
    for row in counts:
        per.setdefault(str(row["service_id"]), {})[str(row["state"])] = int(row["n"])
    in_flight = {str(r["service_id"]): int(r["n"]) for r in in_flight_rows}
    waiting: dict[str, list[rawdb.Row]] = {}
    for row in waiting_rows:
        waiting.setdefault(str(row["service_id"]), []).append(row)
    out: list[dict[str, object]] = []
    for s in services:
        sid = str(s["id"])
        c = per.get(sid, {})
        ready = c.get("ready", 0)
        starting = c.get("pending", 0) + c.get("starting", 0) + c.get("submitting", 0)
        lists = []
        for text in (s["input"], s["output"]):
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                value = []
            lists.append(value if isinstance(value, list) else [])
        config = catalogue.capabilities(s["config_json"])
        capacity = ready * int(s["inferences_per_instance"])
        flying = in_flight.get(sid, 0)
        doc: dict[str, object] = {
            **catalogue.extra_keys(config),
            "id": s["id"],
            "name": s["name"],
            "owned_by": s["owned_by"],
            "input": lists[0],
            "output": lists[1],
            "state": "ready" if ready else ("starting" if starting else "offline"),
            "ready": ready,
            "starting": starting,
            "draining": c.get("draining", 0),
            "target": int(s["target"]),
            "minimum_number_instances": int(s["minimum_number_instances"]),
            "maximum_number_instances": int(s["maximum_number_instances"]),
            "phase": catalogue.phase(c, str(s["admin_state"])),
            "admin": s["admin_state"],
            "queued": c.get("pending", 0) + c.get("submitting", 0),
            "loading": c.get("starting", 0),
            "in_flight": flying,
            "capacity": capacity,
            "demand": catalogue.demand(flying, capacity),
        }
        length = catalogue.context_length(config, s["context_length"])
        if length is not None:
            doc["contextLength"] = length
        until = s["maintenance_until"]
        if until is not None and float(until) > at and not ready and s["admin_state"] == "active":
            doc["phase"] = "maintenance"
            doc["maintenance_until"] = float(until)
            doc["maintenance"] = s["maintenance_name"]
            doc["message"] = "down for maintenance until " + time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(until))
            )
        if not ready:
            jobs = waiting.get(sid, [])
            pending = [j for j in jobs if j["state"] != "starting"]
            running = [j for j in jobs if j["state"] == "starting"]
            reasons = sorted({str(j["slurm_reason"]) for j in pending if j["slurm_reason"]})
            if reasons:
                doc["reason"] = ", ".join(reasons)
            starts = [float(j["slurm_start"]) for j in pending if j["slurm_start"] is not None]
            if starts:
                doc["slurm_start"] = min(starts)
            history = store.status_history(conn, sid)
            doc["estimated_wait"] = catalogue.estimated_wait(
                at,
                [float(h["to_ready"]) for h in history],
                min((float(j["submitted_at"]) for j in pending), default=None),
                min((float(j["started_at"]) for j in running if j["started_at"] is not None), default=None),
                min(starts, default=None),
                [float(h["to_load"]) for h in history if h["to_load"] is not None],
            )
            if doc["phase"] == "maintenance":  # nothing starts before the window ends
                wait = doc["estimated_wait"]
                doc["estimated_wait"] = max(round(float(until) - at), wait if isinstance(wait, int) else 0)
        out.append(doc)
    return {"services": out}


def status(settings: Settings, stdout: int, log: Log) -> int:
    import json

    try:
        conn = rawdb.connect(
            settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
        )
        try:
            doc = status_document(conn)
        finally:
            conn.close()
    except (rawdb.DatabaseUnavailable, rawdb.Error) as e:
        log(f"status: {e}")
        doc = {"services": [], "error": "the state database is unavailable"}
        write_all(stdout, (json.dumps(doc) + "\n").encode("utf-8"))
        return 1
    write_all(stdout, (json.dumps(doc) + "\n").encode("utf-8"))
    return 0
