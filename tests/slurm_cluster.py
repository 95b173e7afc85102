"""A real one-node SLURM cluster on this machine, for tests/test_cluster.py.

munged, slurmctld and slurmd run in the foreground as this process's children, every file they
keep lives under one folder, and the client commands (sbatch, squeue, ...) find the cluster
through SLURM_CONF. Needs root and Debian's ``slurm-wlm`` and ``munge``; it is up in a second or
two. Accounting is off, as on a bare cluster: sacct answers nothing, squeue does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
NODE = "camlt-node"


def unavailable() -> str | None:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "the SLURM daemons run as root here, and this is not root"
    missing = [tool for tool in DAEMONS + CLIENTS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine's CPUs and memory as slurmd sees them (``slurmd -C``), as our node."""
    found = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    first = found.stdout.splitlines()[0].split()
    specs = [field for field in first if not field.startswith("NodeName=")]
    return f"NodeName={NODE} NodeAddr=127.0.0.1 {' '.join(specs)} State=UNKNOWN"


def slurm_conf(root: Path, socket_path: Path) -> str:
    return "\n".join(
        [
            "ClusterName=camlt-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={socket_path}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "MessageTimeout=5",
            "KillWait=5",
            "InactiveLimit=0",
            node_line(),
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


class OneNodeSlurm:
    """start() brings the cluster up, stop() cancels every job and ends the daemons."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 30) -> None:
        for sub in ("state", "spool", "munge", "munge-key"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        (self.root / "munge-key").chmod(0o700)
        self.conf.write_text(slurm_conf(self.root, self.socket))
        m = self.root / "munge"
        self._spawn(
            "munged",
            ["munged", "-F", "-f", f"--key-file={key}", f"--socket={self.socket}"]
            + [f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}"]
            + [f"--log-file={m / 'munged.log'}"],
        )
        self._until(lambda: self.socket.exists(), timeout_s, "munged made no socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._until(self._idle, timeout_s, "the node did not come up idle")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.root / f"{name}.out", "w") as out:
            self.procs.append(
                subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            )

    def _idle(self) -> bool:
        shown = self.run("sinfo", "-h", "-o", "%T", check=False)
        return "idle" in shown.stdout

    def _until(self, ok, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while not ok():
            if time.time() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{what} within {timeout_s:.0f} s:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        tails = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(tails)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A client command against this cluster."""
        return subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=60, check=check
        )

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, Reason, ...)."""
        text = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(f.split("=", 1) for f in text.split() if "=" in f)

    def release(self, job_id: str, timeout_s: float = 30) -> None:
        """Start a requeued job now, not in SLURM's two minutes; a second and a half later than
        its end, though: slurmd refuses a credential dated the second the last one was revoked."""
        self._until(
            lambda: self.show_job(job_id).get("JobState") == "PENDING", timeout_s, "no requeue"
        )
        time.sleep(1.5)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def stop(self) -> None:
        if any(p.poll() is None for p in self.procs[1:]):
            self.run("scancel", "-u", str(os.getuid()), check=False)
            deadline = time.time() + 20
            while time.time() < deadline and self._active_jobs():
                time.sleep(0.2)
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def _active_jobs(self) -> bool:
        shown = self.run("squeue", "-h", "-o", "%T", check=False)
        return shown.returncode == 0 and bool(shown.stdout.strip())
