"""A single-node Slurm cluster on this machine, for running the workflow through the
Snakemake Slurm executor in the tests.

Debian's ``slurm-wlm`` and ``munge`` (``make test-cluster`` installs them) are started as
root:
``munged`` as the munge user, ``slurmctld`` and ``slurmd`` in the foreground with a
``slurm.conf`` written to a temporary folder, controller and node on 127.0.0.1. Every
daemon started here is stopped by its pid. The node advertises twice the machine's
CPUs, its memory and two GPUs, backed by placeholder device files, so that the
profile's ``gpu`` requests are scheduled; the demo's models run on the CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

#: the commands a cluster needs, by Debian package
PACKAGES = {
    "slurm-wlm": ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo"),
    "munge": ("munged",),
}
NODE = "localhost"
PARTITION = "debug"
#: CPUs the node declares: twice the machine's, so that the Snakemake process that starts
#: each Slurm job overlaps another job's work (a job still gets at most the machine's)
NODE_CPUS = 2 * (os.cpu_count() or 1)
#: placeholder GPUs of the node: two model stages may run at once, as two CPU stages may
GPUS = 2
#: Snakemake options of a run on the test cluster: the plugin's job status from squeue
#: (no accounting database here), a first status check after 5 s instead of 40 (the
#: demo's jobs are short), the jobs' Slurm logs kept for the tests, and as many jobs at a
#: time as the node takes
OPTIONS = (
    "--jobs",
    str(NODE_CPUS),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
    "--slurm-keep-successful-logs",
)


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    if os.geteuid() != 0:
        return "the single-node Slurm cluster is started as root; the tests run as another user"
    missing = [
        f"{cmd} ({package})"
        for package, cmds in PACKAGES.items()
        for cmd in cmds
        if shutil.which(cmd) is None and not Path("/usr/sbin", cmd).exists()
    ]
    if missing:
        missing = ", ".join(missing)
        return f"Slurm is not installed (`make test-cluster` installs it): missing {missing}"
    # where job steps look for a configuration before the one served to the test node
    for conf in (Path("/etc/slurm/slurm.conf"), Path("/run/slurm/conf/slurm.conf")):
        if conf.exists():
            return f"this machine has a Slurm configuration, {conf}, that would clash"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages / 2**20 * 0.9)


def _slurm_conf(root: Path, ctld_port: int, cpus: int, memory_mb: int) -> str:
    return f"""\
ClusterName=neuroclips
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SlurmctldParameters=enable_configless
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait(condition, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise RuntimeError(f"Slurm test cluster: {what} within {timeout} s\n{tails}")
        time.sleep(0.5)


@contextmanager
def slurm_cluster(root: Path):
    """Start munged, slurmctld and slurmd under ``root``; yield the environment (with
    ``SLURM_CONF``) in which Slurm's commands reach them and the daemons' pids; stop
    the daemons on exit."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    ctld_port = _free_port()
    conf.write_text(_slurm_conf(root, ctld_port, NODE_CPUS, _memory_mb()))
    for gpu in range(GPUS):
        (root / f"gpu{gpu}").touch()
    (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={root}/gpu[0-{GPUS - 1}]\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = [root / "munged.out", root / "slurmctld.log", root / "slurmd.log"]
    daemons: list[subprocess.Popen] = []
    try:
        # munged: the default socket, which Slurm's auth plugin uses; reuse a running one
        socket_path = Path("/run/munge/munge.socket.2")
        if not socket_path.exists():
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.chown(socket_path.parent, "munge", "munge")
            munged = shutil.which("munged") or "/usr/sbin/munged"
            # setpriv execs munged as the munge user, so the pid is munged's own
            cmd = ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", munged]
            cmd.append("--foreground")
            daemons.append(_start(cmd, logs[0], env))
            _wait(socket_path.exists, "munged did not create its socket", logs)
        slurmctld = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
        slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
        daemons.append(_start([slurmctld, "-D", "-f", str(conf)], root / "ctld.out", env))
        # configless: slurmd fetches the configuration from the controller and caches it in
        # /run/slurm/conf, where the job steps' srun finds it (the Snakemake job step
        # drops SLURM_CONF from their environment)
        cmd = [slurmd, "-D", "-N", NODE, "--conf-server", f"127.0.0.1:{ctld_port}"]
        daemons.append(_start(cmd, root / "d.out", env))

        def node_idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env
            )
            return out.stdout.strip() == "idle"

        _wait(node_idle, "the node did not become idle", logs)
        yield env, [d.pid for d in daemons]
    finally:
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        link = Path("/run/slurm/conf")
        if link.is_symlink() and Path(os.readlink(link)).is_relative_to(root):
            link.unlink()


def fitted_profile(profile: Path, target: Path) -> Path:
    """A copy of the Slurm ``profile`` in ``target`` fitted to the test cluster: its
    partition for both placeholders, no account (the cluster has no accounting), every
    rule's memory capped at the node's and its CPUs at one: the run shares the machine's
    cores with the test suite (tests/conftest.py, ``--max-threads``)."""
    import yaml

    text = (profile / "config.yaml").read_text()
    for placeholder in ("YOUR_CPU_PARTITION", "YOUR_GPU_PARTITION"):
        text = text.replace(placeholder, PARTITION)
    config = yaml.safe_load(text)
    config["default-resources"].pop("slurm_account")
    memory_mb = _memory_mb()
    for resources in [config["default-resources"], *config["set-resources"].values()]:
        resources["cpus_per_task"] = 1
        resources["mem_mb"] = min(resources["mem_mb"], memory_mb)
    config["set-threads"] = dict.fromkeys(config["set-threads"], 1)
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target
