"""Slurm checks: the commands are found and answer; each batch script is accepted by sbatch --test-only.

They go through ``RealSlurm`` (the same folder, SLURM_CONF and timeout as the
tick), and a batch script is tested with the argv the tick submits it with.
"""

from __future__ import annotations

import getpass
import os
import shutil
import time

from ..scheduler.apply import submit_place
from ..scheduler.names import job_name
from ..settings import Settings
from ..slurm import RealSlurm, SlurmError
from .result import CheckResult, failed, passed

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
FIX_FIND = "install the Slurm client commands, or set SAIA_SLURM_BIN to the folder that holds them"
FIX_CONTROLLER = (
    "check that slurmctld is up and that SLURM_CONF (or SAIA_SLURM_CONF) names this cluster's slurm.conf"
)


def find_command(name: str, slurm_bin: str) -> str | None:
    """Where the tick finds a Slurm command: in SAIA_SLURM_BIN, else on PATH."""
    if slurm_bin:
        path = os.path.join(slurm_bin, name)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(name)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def check_commands(settings: Settings) -> CheckResult:
    """sbatch, squeue, scancel and scontrol are found and answer ``--version``."""
    name = "slurm commands"
    where = f"SAIA_SLURM_BIN={settings.slurm_bin}" if settings.slurm_bin else "PATH"
    found = {cmd: find_command(cmd, settings.slurm_bin) for cmd in SLURM_COMMANDS}
    missing = [cmd for cmd, path in found.items() if path is None]
    if missing:
        return failed(name, f"not found in {where}: {', '.join(missing)}", FIX_FIND)
    slurm = RealSlurm(settings)
    versions = set()
    start = time.monotonic()
    for cmd in SLURM_COMMANDS:
        try:
            proc = slurm.run(cmd, "--version")
        except SlurmError as e:
            return failed(name, str(e), FIX_FIND)
        if proc.returncode != 0:
            return failed(
                name,
                f"{cmd} --version failed (rc={proc.returncode}): {_first_line(proc.stderr)}",
                "repair the Slurm client installation, and check that SLURM_CONF (or SAIA_SLURM_CONF) "
                "names a readable slurm.conf",
            )
        versions.add(_first_line(proc.stdout))
    took = time.monotonic() - start
    folders = sorted({os.path.dirname(str(p)) for p in found.values()})
    return passed(
        name,
        f"{', '.join(SLURM_COMMANDS)} in {', '.join(folders)} ({'; '.join(sorted(versions))}), {took:.2f} s",
    )


def check_controller(settings: Settings) -> CheckResult:
    """``squeue -h -o %i -u USER`` answers within SAIA_SLURM_TIMEOUT, and how long it took."""
    name = "slurm controller"
    user = getpass.getuser()
    start = time.monotonic()
    try:
        proc = RealSlurm(settings).run("squeue", "-h", "-o", "%i", "-u", user)
    except SlurmError as e:
        return failed(name, f"{e} (SAIA_SLURM_TIMEOUT={settings.slurm_timeout:g})", FIX_CONTROLLER)
    took = time.monotonic() - start
    if proc.returncode != 0:
        return failed(
            name,
            f"squeue failed (rc={proc.returncode}) after {took:.2f} s: {_first_line(proc.stderr or proc.stdout)}",
            FIX_CONTROLLER,
        )
    jobs = len([line for line in proc.stdout.splitlines() if line.strip()])
    return passed(name, f"squeue answered in {took:.2f} s ({jobs} job(s) of {user})")


def check_batch_script(settings: Settings, service_id: str, script: str, port: int) -> CheckResult:
    """The script exists and ``sbatch --test-only`` accepts it with the tick's options."""
    name = f"batch script {service_id}"
    fix_script = (
        "restore the script, or correct the service's sbatch in config.json and run `saia-ctl init` again"
    )
    if not os.path.isfile(script):
        return failed(name, f"no file {script}", fix_script)
    if not os.access(script, os.R_OK):
        return failed(name, f"{script} is not readable by this account", "make it readable")
    place = submit_place(settings)
    start = time.monotonic()
    try:
        answer = RealSlurm(settings).test_submit(
            script,
            name=job_name(settings.job_prefix, 1, service_id),
            port=port,
            env={"SAIA_PORT": str(port), "SAIA_SBATCH": script},
            workdir=place.workdir,
            output=place.output,
            extra_args=place.extra_args,
        )
    except SlurmError as e:
        return failed(
            name,
            f"sbatch --test-only refused {script}: {e}",
            f"correct the #SBATCH lines of {script} (partition, account, gres, time) to what this cluster offers",
        )
    took = time.monotonic() - start
    answer = answer.removeprefix("sbatch: ")
    return passed(name, f"{script}: sbatch --test-only accepts it ({answer}), {took:.2f} s")
