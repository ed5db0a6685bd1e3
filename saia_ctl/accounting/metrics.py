"""Live figures in the Prometheus text exposition format (for node_exporter's textfile collector)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.orm import Session

from ..models import JobState
from .figures import dbapi, named


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in kv.items()) + "}"


def metrics(session: Session, now: float) -> str:
    conn = dbapi(session)
    services = [r["id"] for r in named(conn).execute("SELECT id FROM services WHERE enabled ORDER BY id")]
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    in_flight = {
        r["service_id"]: r["n"]
        for r in named(conn).execute(
            "SELECT service_id, COUNT(*) AS n FROM requests WHERE ended_at IS NULL GROUP BY service_id"
        )
    }
    family("saia_requests_in_flight", "gauge", "Requests in flight per service.")
    for s in sorted(set(services) | set(in_flight)):
        out.append(f"saia_requests_in_flight{_labels(service=s)} {in_flight.get(s, 0)}")

    jobs: dict[tuple[str, str], int] = {
        (s, st): n
        for s, st, n in conn.execute(
            "SELECT service_id, state, COUNT(*) FROM jobs WHERE ended_at IS NULL GROUP BY service_id, state"
        )
    }
    family("saia_jobs", "gauge", "Live jobs per service and state.")
    for s in sorted(set(services) | {k[0] for k in jobs}):
        for st in JobState:
            if st is JobState.ENDED:
                continue
            out.append(f"saia_jobs{_labels(service=s, state=st.value)} {jobs.get((s, st.value), 0)}")

    # Counters: rows in the table plus rows deleted by `db prune`, so they never go down.
    req: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for s, o, n, tin, tout in conn.execute(
        "SELECT service_id, outcome, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0)"
        " FROM requests WHERE outcome IS NOT NULL GROUP BY service_id, outcome"
    ):
        req[(s, o)] = [n, tin, tout]
    for s, o, n, tin, tout in conn.execute(
        "SELECT service_id, outcome, requests, input_tokens, output_tokens FROM pruned_totals"
    ):
        acc = req[(s, o)]
        acc[0] += n
        acc[1] += tin
        acc[2] += tout
    family("saia_requests_total", "counter", "Finished requests per service and outcome.")
    for (s, o), (n, _, _) in sorted(req.items()):
        out.append(f"saia_requests_total{_labels(service=s, outcome=o)} {n}")
    family("saia_tokens_total", "counter", "Tokens of finished requests per service, outcome and kind.")
    for (s, o), (_, tin, tout) in sorted(req.items()):
        out.append(f"saia_tokens_total{_labels(service=s, outcome=o, kind='input')} {tin}")
        out.append(f"saia_tokens_total{_labels(service=s, outcome=o, kind='output')} {tout}")

    last = named(conn).execute("SELECT MAX(started_at) AS last FROM ticks").fetchone()["last"]
    family("saia_last_tick_age_seconds", "gauge", "Seconds since the last scheduler tick began.")
    if last is not None:
        out.append(f"saia_last_tick_age_seconds {max(0.0, now - float(last)):.3f}")
    return "\n".join(out) + "\n"
