"""Admission: limits and budgets decided in the transaction that records a request.

Standard library only (the request path). ``handler.handle_request`` calls
``admit`` inside the same ``BEGIN IMMEDIATE`` transaction that inserts the
request row, so no two requests, on one login node or several, decide from
the same counter value: with a limit of k and any number of simultaneous
requests, exactly k are served.

Semantics (docs/accounting.md, "Limits and projects"):

- A limit applies to a user (its own figures), to a project (all its members
  together) or is a default (each user's own figures, where the user has no
  limit of that kind for that service). ``service_id`` '' means all services
  together; a service-specific limit applies in addition.
- Windows: ``minute`` and ``hour`` are fixed windows aligned on the epoch
  (UTC minute and hour boundaries); ``day`` and ``month`` are calendar
  windows in ``SAIA_ACCOUNTING_TZ``. A counter row holds the key of its window:
  a row of an older window counts as 0.
- Request counts: a request is refused if serving it would exceed the limit;
  ``concurrent`` counts the subject's rows in flight. Tokens and GPU-hours are
  known only afterwards: a request is refused when the recorded figure has
  reached the budget, so a burst of n requests in flight can overrun it by what
  those n requests use.
- A missing or unreadable counter row is rebuilt from the request rows of its
  window (never taken as 0). GPU-hours cannot be rebuilt here (they come from
  the ledger): the tick, and every ``saia-ctl limits``/``projects`` change,
  write each subject's figure (``saia_ctl.limits.refresh_gpu_figures``) and a
  mark row; a missing figure with the month's mark is 0, without it the
  request is refused with 503 (never admitted unchecked).
- Refused requests are recorded with status 429 and an error naming the
  limit (``REFUSED_PREFIX``) and consume nothing: counters change only for
  admitted requests.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeGuard

    from .. import rawdb

WINDOWS = ("minute", "hour", "day", "month")
REQUEST_KINDS = ("requests_minute", "requests_hour", "requests_day", "requests_month")
TOKEN_KINDS = ("tokens_day", "tokens_month")
KINDS = (*REQUEST_KINDS, "concurrent", *TOKEN_KINDS, "gpu_hours_month")
DEFAULT_PROJECT = "default"
GPU_MARK = "*"  # subject of the row saying the GPU-hours figures of its month were written
# The error text of a refused request starts with this (reports and rebuilds find them by it).
REFUSED_PREFIX = "refused by limit "
NOT_REFUSED = "coalesce(error, '') NOT LIKE 'refused by limit %'"


MEMBERS_SQL = "SELECT project, member FROM project_members ORDER BY project, member"
# The limits of a request with each one's counter row (NULLs if none) in one statement: the
# counter of a project limit is the project's, the others' the user's.
_LIMITS_WITH_COUNTERS = """
SELECT l.scope, l.subject, l.service_id, l.kind, l.value, c.window AS counter_window,
       c.value AS counter_value
  FROM limits l LEFT JOIN limit_counters c
    ON c.subject = CASE WHEN l.scope = 'project' THEN 'project:' || :project ELSE 'user:' || :user_id END
   AND c.service_id = l.service_id AND c.kind = l.kind
 WHERE {where}
"""
# Those of a request on a service.
LIMITS_SQL = _LIMITS_WITH_COUNTERS.format(
    where="l.service_id IN ('', :service_id)"
    " AND ((l.scope = 'user' AND l.subject = :user_id) OR (l.scope = 'project' AND l.subject = :project)"
    " OR l.scope = 'default')"
)
# Every limit of a user whatever the service (the usage view).
ALL_LIMITS_SQL = _LIMITS_WITH_COUNTERS.format(
    where="(l.scope = 'user' AND l.subject = :user_id) OR (l.scope = 'project' AND l.subject = :project)"
    " OR l.scope = 'default'"
)
COUNTER_SQL = (
    "SELECT window, value FROM limit_counters WHERE subject = :subject AND service_id = :service_id "
    "AND kind = :kind"
)
UPSERT_COUNTER_SQL = """
INSERT INTO limit_counters (subject, service_id, kind, window, value)
VALUES (:subject, :service_id, :kind, :window, :value)
ON CONFLICT (subject, service_id, kind) DO UPDATE SET window = excluded.window, value = excluded.value
"""
ADD_TOKENS_SQL = """
UPDATE limit_counters SET value = value + :tokens
 WHERE subject = :subject AND service_id = :service_id AND kind = :kind AND window = :window
"""


def glob_match(pattern: str, text: str) -> bool:
    """``*`` (any run) and ``?`` (one character) matching, case-sensitive, without ``re``."""
    p = t = 0
    star = -1
    mark = 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def is_pattern(member: str) -> bool:
    return "*" in member or "?" in member


def project_in(members: list[tuple[str, str]], user_id: str) -> str:
    """The user's project: an exact member first, else the first matching pattern
    (projects in name order), else the default project."""
    for project, member in members:
        if member == user_id:
            return project
    for project, member in members:
        if is_pattern(member) and glob_match(member, user_id):
            return project
    return DEFAULT_PROJECT


def project_of(conn: rawdb.Connection, user_id: str) -> str:
    return project_in(read_members(conn), user_id)


def read_members(conn: rawdb.Connection) -> list[tuple[str, str]]:
    return [(str(r["project"]), str(r["member"])) for r in conn.execute(MEMBERS_SQL)]


# --- windows -----------------------------------------------------------------


def _local(now: float, tz: str) -> time.struct_time:
    if tz == "UTC":
        return time.gmtime(now)
    if os.environ.get("TZ") != tz:  # tzset is cheap; zoneinfo costs ~10 ms per request
        os.environ["TZ"] = tz
        time.tzset()
    return time.localtime(now)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (``calendar`` costs ~14 ms to import)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _local_epoch(year: int, month: int, day: int, tz: str) -> float:
    """Epoch seconds of local midnight of that date in tz."""
    if tz == "UTC":
        return _days_from_civil(year, month, day) * 86400.0
    _local(0.0, tz)
    return time.mktime((year, month, day, 0, 0, 0, 0, 0, -1))


def window_of(window: str, now: float, tz: str) -> tuple[str, float, float]:
    """(key, start, end) of the window holding ``now``."""
    if window == "minute":
        start = now // 60 * 60
        return str(int(start)), start, start + 60
    if window == "hour":
        start = now // 3600 * 3600
        return str(int(start)), start, start + 3600
    lt = _local(now, tz)
    if window == "day":
        start = _local_epoch(lt.tm_year, lt.tm_mon, lt.tm_mday, tz)
        nxt = _local(start + 90000, tz)  # 25 h later: the next day, whatever the DST change
        end = _local_epoch(nxt.tm_year, nxt.tm_mon, nxt.tm_mday, tz)
        return f"{lt.tm_year:04d}-{lt.tm_mon:02d}-{lt.tm_mday:02d}", start, end
    start = _local_epoch(lt.tm_year, lt.tm_mon, 1, tz)
    year, month = (lt.tm_year + 1, 1) if lt.tm_mon == 12 else (lt.tm_year, lt.tm_mon + 1)
    return f"{lt.tm_year:04d}-{lt.tm_mon:02d}", start, _local_epoch(year, month, 1, tz)


def window_name(kind: str) -> str:
    return kind.rsplit("_", 1)[1]


# --- decisions ---------------------------------------------------------------


class Applied:
    """One limit that applies to a request, with what its subject used so far."""

    __slots__ = (
        "counter", "end", "kind", "limit", "scope", "service_id", "stored", "subject", "used", "window",
    )  # fmt: skip

    def __init__(self, scope: str, subject: str, service_id: str, kind: str, limit: float) -> None:
        self.scope = scope
        self.subject = subject  # 'user:ID' or 'project:NAME'
        self.service_id = service_id
        self.kind = kind
        self.limit = limit
        self.used = 0.0
        self.window = ""
        self.end = 0.0
        self.counter = False  # whether this limit has a counter row
        self.stored: tuple[object, object] = (None, None)  # its counter row's (window, value) as read

    def describe(self) -> str:
        where = f" on {self.service_id}" if self.service_id else ""
        limit = int(self.limit) if self.limit == int(self.limit) else self.limit
        return f"{self.kind} = {limit} of {self.subject.replace(':', ' ', 1)}{where}"


class Decision:
    """What admission decided: ``refused`` (None = admitted), headers for the answer."""

    __slots__ = ("applied", "headers", "refused", "retry_after", "status")

    def __init__(self) -> None:
        self.applied: list[Applied] = []
        self.refused: Applied | None = None
        self.status = 429  # 503 when a figure needed for the decision is missing
        self.retry_after = 0
        self.headers: list[tuple[str, str]] = []

    def message(self) -> str:
        if self.refused is None:
            return ""
        if self.status == 503:
            return (
                f"{REFUSED_PREFIX}{self.refused.describe()}: the month's GPU-hours figure is not "
                "computed yet; try again later"
            )
        return f"{REFUSED_PREFIX}{self.refused.describe()}: used {_num(self.refused.used)}"

    def token_counters(self) -> list[Applied]:
        return [a for a in self.applied if a.kind in TOKEN_KINDS]


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:.3f}"


def applicable(rows: list[rawdb.Row], user_id: str, project: str) -> list[Applied]:
    """The limits of a request: the user's own (else the default) per service and kind,
    and the project's; each with its counter row as read (``LIMITS_SQL``)."""
    own: dict[tuple[str, str], Applied] = {}
    out: list[Applied] = []
    for r in sorted(rows, key=lambda r: r["scope"] != "default"):  # defaults first, then overridden
        scope, kind, service_id, value = str(r["scope"]), str(r["kind"]), str(r["service_id"]), r["value"]
        if scope == "project":
            a = Applied(scope, f"project:{project}", service_id, kind, float(value))
            out.append(a)
        else:
            a = own[(service_id, kind)] = Applied(scope, f"user:{user_id}", service_id, kind, float(value))
        a.stored = (r["counter_window"], r["counter_value"])
    return list(own.values()) + out


def _members_filter(
    conn: rawdb.Connection, a: Applied, members: list[tuple[str, str]], sql: str, params: dict[str, object]
) -> float:
    """Sum a per-user figure over the users of a project (or the one user)."""
    name = a.subject.split(":", 1)[1]
    if a.subject.startswith("user:"):
        params["user_id"] = name
        row = conn.execute(sql.format(who="user_id = :user_id AND"), params).fetchone()
        return float(row["n"] or 0)
    total = 0.0
    grouped = sql.replace("AS n", "AS n, user_id").format(who="") + " GROUP BY user_id"
    for row in conn.execute(grouped, params):
        if project_in(members, str(row["user_id"])) == name:
            total += float(row["n"] or 0)
    return total


def _service_clause(a: Applied) -> str:
    return " AND service_id = :service_id" if a.service_id else ""


def in_flight(conn: rawdb.Connection, a: Applied, members: list[tuple[str, str]]) -> float:
    sql = "SELECT count(*) AS n FROM requests WHERE {who} ended_at IS NULL" + _service_clause(a)
    return _members_filter(conn, a, members, sql, {"service_id": a.service_id})


def rebuild(conn: rawdb.Connection, a: Applied, start: float, members: list[tuple[str, str]]) -> float:
    """What the subject used in the window from ``start``, counted from the request rows."""
    what = (
        "count(*)"
        if a.kind in REQUEST_KINDS
        else "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0))"
    )
    sql = (
        f"SELECT {what} AS n FROM requests WHERE {{who}} started_at >= :start AND {NOT_REFUSED}"
        + _service_clause(a)
    )
    return _members_filter(conn, a, members, sql, {"service_id": a.service_id, "start": start})


def _valid(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and value == value and 0 <= value < float("inf")


def evaluate(
    conn: rawdb.Connection, user_id: str, service_id: str | None, now: float, tz: str
) -> tuple[Decision, list[tuple[str, str]]]:
    """Every limit that applies to a request of the user on the service (None: on any
    service) with what its subject used (no writes); and the project members."""
    members = read_members(conn)
    project = project_in(members, user_id)
    params = {"service_id": service_id, "user_id": user_id, "project": project}
    rows = list(conn.execute(LIMITS_SQL if service_id is not None else ALL_LIMITS_SQL, params))
    d = Decision()
    d.applied = applicable(rows, user_id, project)
    for a in d.applied:
        if a.kind == "concurrent":
            a.used = in_flight(conn, a, members)
            continue
        a.window, start, a.end = window_of(window_name(a.kind), now, tz)
        window, value = a.stored
        if isinstance(window, str) and _valid(value):
            a.counter = True
            a.used = float(value) if window == a.window else 0.0
        elif a.kind == "gpu_hours_month":
            # no figure: none used if the figures of this month were written, else unknown
            mark = conn.execute(
                COUNTER_SQL, {"subject": GPU_MARK, "service_id": "", "kind": a.kind}
            ).fetchone()
            a.used = 0.0 if mark is not None and mark["window"] == a.window else float("nan")
        else:
            a.used = rebuild(conn, a, start, members)
    return d, members


def admit(conn: rawdb.Connection, user_id: str, service_id: str, now: float, tz: str) -> Decision:
    """Decide and, if admitted, count the request. Call inside ``rawdb.immediate``."""
    d, _members = evaluate(conn, user_id, service_id, now, tz)
    for a in d.applied:
        if a.kind == "gpu_hours_month" and a.used != a.used:
            d.refused, d.status, d.retry_after = a, 503, 60
            break
        over = (
            a.used + 1 > a.limit if a.kind in REQUEST_KINDS or a.kind == "concurrent" else a.used >= a.limit
        )
        if over:
            d.refused = a
            d.retry_after = 1 if a.kind == "concurrent" else max(1, int(a.end - now + 0.999))
            break
    if d.refused is None:
        for a in d.applied:
            if a.kind in REQUEST_KINDS:
                a.used += 1
        conn.executemany(
            UPSERT_COUNTER_SQL,
            [
                {
                    "subject": a.subject,
                    "service_id": a.service_id,
                    "kind": a.kind,
                    "window": a.window,
                    "value": a.used,
                }
                for a in d.applied
                if a.kind in REQUEST_KINDS or a.kind in TOKEN_KINDS
            ],
        )
    d.headers = rate_headers(d.applied)
    if d.refused is not None:
        d.headers.insert(0, ("Retry-After", str(d.retry_after)))
    return d


def rate_headers(applied: list[Applied]) -> list[tuple[str, str]]:
    """``x-ratelimit-limit-{window}`` / ``x-ratelimit-remaining-{window}`` (the names of SAIA's
    gateway): per window, the tightest request limit that applies."""
    tightest: dict[str, tuple[float, float]] = {}
    for a in applied:
        if a.kind in REQUEST_KINDS:
            w = window_name(a.kind)
            left = max(0.0, a.limit - a.used)
            if w not in tightest or left < tightest[w][1]:
                tightest[w] = (a.limit, left)
    out: list[tuple[str, str]] = []
    for w in WINDOWS:
        if w in tightest:
            limit, left = tightest[w]
            out.append((f"x-ratelimit-limit-{w}", _num(limit)))
            out.append((f"x-ratelimit-remaining-{w}", _num(left)))
    return out


def add_tokens(conn: rawdb.Connection, d: Decision, tokens: int) -> None:
    """Add a finished request's tokens to its token counters (those of its start's window)."""
    for a in d.token_counters():
        conn.execute(
            ADD_TOKENS_SQL,
            {
                "tokens": tokens,
                "subject": a.subject,
                "service_id": a.service_id,
                "kind": a.kind,
                "window": a.window,
            },
        )


def with_headers(head: bytes, headers: list[tuple[str, str]]) -> bytes:
    """An answer head with ``headers`` added before its blank line."""
    if not headers:
        return head
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("ascii")
    end = head.rfind(b"\r\n\r\n")
    if end < 0:
        return head
    return head[: end + 2] + extra + head[end + 2 :]
