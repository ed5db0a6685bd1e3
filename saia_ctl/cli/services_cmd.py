"""`saia-ctl services ...`: the configured services."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy import select

from . import common

app = typer.Typer(help="Configured services.", no_args_is_help=True)

COLUMNS = (
    "id",
    "name",
    "owned_by",
    "minimum_number_instances",
    "maximum_number_instances",
    "inferences_per_instance",
    "job_expiry_time",
    "enabled",
    "state",
)

# `saia-ctl services STATE-COMMAND SERVICE`: the operator's state each sets, and
# the states it may be given from.
STATE_COMMANDS = {
    "drain": ("draining", ("active", "draining")),
    "resume": ("active", ("draining", "active")),
    "disable": ("disabled", ("active", "draining", "disabled")),
    "enable": ("active", ("disabled", "active")),
}


@app.command("list")
@common.command
def list_services(fmt: common.FormatOption = common.Format.table) -> None:
    """List the services imported by `saia-ctl init`."""
    from ..db import read_session
    from ..durations import format_duration
    from ..models import Service

    rows = []
    with read_session(common.engine()) as s:
        for svc in s.scalars(select(Service).order_by(Service.id)):
            rows.append(
                {
                    "id": svc.id,
                    "name": svc.name,
                    "owned_by": svc.owned_by,
                    "input": json.loads(svc.input),
                    "output": json.loads(svc.output),
                    "sbatch": svc.sbatch,
                    "minimum_number_instances": svc.minimum_number_instances,
                    "maximum_number_instances": svc.maximum_number_instances,
                    "inferences_per_instance": svc.inferences_per_instance,
                    "job_expiry_time": format_duration(svc.job_expiry_time),
                    "ready_timeout": svc.ready_timeout,
                    "idle_timeout": svc.idle_timeout,
                    "scale_down_cooldown": svc.scale_down_cooldown,
                    "health_failures": svc.health_failures,
                    "request_hold_time": svc.request_hold_time,
                    "enabled": svc.enabled,
                    "state": svc.admin_state,
                }
            )
    columns = COLUMNS if fmt is common.Format.table else (list(rows[0]) if rows else COLUMNS)
    common.echo(common.render(rows, fmt, columns))


def set_state(service_id: str, command: str) -> tuple[str, str, int]:
    """Set the operator's state of a service; (old state, new state, live jobs).

    Draining or disabling stops new requests (503) and lets the next tick drain
    the service's jobs (in-flight requests finish, then Slurm cancels them);
    resuming or enabling lets the next tick start jobs again. config.json never
    changes this state.
    """
    from ..db import write_session
    from ..models import LIVE_JOB_STATES, Job, Service

    new, allowed = STATE_COMMANDS[command]
    with write_session(common.engine()) as s:
        svc = s.get(Service, service_id)
        if svc is None:
            common.fail(f"no service {service_id!r} (see `saia-ctl services list`)")
        old = svc.admin_state
        if old not in allowed:
            hint = "resume" if old == "draining" else "enable"
            common.fail(f"service {service_id} is {old}: use `saia-ctl services {hint} {service_id}`")
        svc.admin_state = new
        live = len(
            s.scalars(
                select(Job.id).where(
                    Job.service_id == service_id, Job.state.in_([x.value for x in LIVE_JOB_STATES])
                )
            ).all()
        )
    return old, new, live


def _state_command(command: str, service_id: str) -> None:
    old, new, live = set_state(service_id, command)
    if old == new:
        common.echo(f"{service_id}: already {new}")
    elif new == "active":
        common.echo(f"{service_id}: {old} -> active; the next tick starts jobs as its load and minimum need")
    else:
        common.echo(
            f"{service_id}: {old} -> {new}; new requests get 503, the next tick drains its {live} live job(s)"
            " (in-flight requests finish first)"
        )


ServiceArg = Annotated[str, typer.Argument(help="The service id.", show_default=False)]


@app.command("drain")
@common.command
def drain(service: ServiceArg) -> None:
    """Drain a service by hand: no new requests (503), its jobs end once their requests do."""
    _state_command("drain", service)


@app.command("resume")
@common.command
def resume(service: ServiceArg) -> None:
    """Undo `drain`: the service takes requests and gets jobs again."""
    _state_command("resume", service)


@app.command("disable")
@common.command
def disable(service: ServiceArg) -> None:
    """Take a service out of service until `enable` (a re-import of config.json keeps it so)."""
    _state_command("disable", service)


@app.command("enable")
@common.command
def enable(service: ServiceArg) -> None:
    """Undo `disable`."""
    _state_command("enable", service)
