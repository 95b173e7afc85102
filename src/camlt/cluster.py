"""Runs on a SLURM cluster, or on this machine, through submitit.

A job is a pickled callable. ``TrainJob`` trains one run inside the job's own processes (one per
GPU, torch.distributed between them); ``CommandJob`` runs one ``camlt train`` command (a results
table's row). Both resume from the run's last checkpoint when SLURM requeues them after a
preemption or a time-out. The same code drives submitit's local executor, so a laptop, a GPU box
and a cluster share one path (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camlt.errors import UserError

if TYPE_CHECKING:  # imported where used: ``camlt --help`` and a job's wrapper stay light
    import submitit
    from omegaconf import DictConfig

KINDS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # submitit's local executor stops a job after 2 minutes
SLURM_TIMEOUT_MIN = 60 * 24  # submitit asks for 5 minutes unless told
# Time-outs after which a job is not requeued again (submitit's default is 3, too few for a long
# run on a short partition; preemptions do not count).
MAX_TIMEOUTS = 30
# squeue states after which a job will not run again without someone acting on it.
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
# What sbatch says when there is no controller to talk to (not a refusal of this job).
UNREACHABLE = (
    "unable to contact slurm controller",
    "unable to process configuration file",
    "could not establish a configuration source",
)
RESULT_GRACE_S = 15  # a shared file system may show a job's result file after the job has ended


class ClusterError(UserError, RuntimeError):
    """A job that cannot be submitted, or no cluster to submit it to."""


class JobFailed(ClusterError):
    """A job that ended without its result; the message names its log files."""


@dataclass(frozen=True)
class Resources:
    """What each job asks for. None leaves a setting to SLURM (the partition's default)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    name: str = "camlt"

    @property
    def world(self) -> int:
        return self.nodes * self.tasks_per_node


def add_resource_arguments(parser: argparse.ArgumentParser, tasks: bool = True) -> None:
    """The options of ``camlt submit`` and of the table runner (``tasks``: the multi-process ones)."""
    if tasks:
        parser.add_argument("--nodes", type=int, default=1, help="nodes (SLURM --nodes)")
        parser.add_argument(
            "--tasks-per-node",
            type=int,
            help="processes per node without GPUs, torch.distributed with gloo (default 1)",
        )
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=0,
        help="GPUs per node (SLURM --gpus-per-node)"
        + ("; one process each, NCCL between them" if tasks else ""),
    )
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per process (SLURM)")
    parser.add_argument("--mem-gb", type=float, help="memory per node in GB (SLURM --mem)")
    parser.add_argument(
        "--time",
        type=int,
        dest="timeout_min",
        metavar="MIN",
        help=f"minutes before SLURM stops the job and it requeues (default {SLURM_TIMEOUT_MIN}; "
        "locally none)",
    )
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account to charge")
    parser.add_argument("--qos", help="SLURM quality of service")
    parser.add_argument("--constraint", help="SLURM node features, e.g. a100")
    parser.add_argument("--folder", type=Path, help="where submitit keeps the job files and logs")


def resources_from(args: argparse.Namespace) -> Resources:
    """Resources from the options, one process per GPU."""
    gpus = args.gpus_per_node
    tasks = getattr(args, "tasks_per_node", None)
    if gpus < 0 or (tasks is not None and tasks < 1) or getattr(args, "nodes", 1) < 1:
        raise ClusterError("--nodes, --tasks-per-node and --gpus-per-node must be positive")
    if gpus and tasks not in (None, gpus):
        raise ClusterError(
            f"--tasks-per-node {tasks} with --gpus-per-node {gpus}: camlt runs one process per "
            "GPU; leave --tasks-per-node out"
        )
    return Resources(
        nodes=getattr(args, "nodes", 1),
        tasks_per_node=gpus or tasks or 1,
        gpus_per_node=gpus,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        timeout_min=args.timeout_min,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
    )


# ----------------------------------------------------------------------------- executors
def no_slurm(why: str, local_hint: str) -> ClusterError:
    return ClusterError(f"no SLURM cluster reachable from here ({why}); {local_hint}")


def executor(kind: str, folder: Path, res: Resources, local_hint: str = "") -> submitit.Executor:
    """A submitit executor for ``kind`` (local or slurm) with ``res`` as its parameters.

    A local folder gets a subfolder per session: local job ids are process ids, which a later
    boot hands out again, and an old result file under the same id would pass for the new one.
    """
    import submitit

    if kind not in KINDS:
        raise ClusterError(f"cluster {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "local":
        if res.nodes > 1:
            raise ClusterError(f"--nodes {res.nodes}: a local job runs on this machine, one node")
        folder = Path(folder) / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        ex.update_parameters(
            name=res.name,
            tasks_per_node=res.tasks_per_node,
            timeout_min=res.timeout_min or LOCAL_TIMEOUT_MIN,
        )
        return ex
    missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
    if missing:
        raise no_slurm(f"{', '.join(missing)} not on PATH", local_hint)
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(**slurm_parameters(res))
    return ex


def slurm_parameters(res: Resources) -> dict[str, Any]:
    """submitit's names for ``res`` (docs/cluster.md maps them to sbatch's options)."""
    params: dict[str, Any] = {
        "name": res.name,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "timeout_min": res.timeout_min or SLURM_TIMEOUT_MIN,
        "cpus_per_task": res.cpus_per_task,
        "mem_gb": res.mem_gb,
        "slurm_partition": res.partition,
        "slurm_account": res.account,
        "slurm_qos": res.qos,
        "slurm_constraint": res.constraint,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    return {k: v for k, v in params.items() if v is not None}


def kind_of(ex: submitit.Executor) -> str:
    return getattr(ex, "cluster", "local")


def submit(
    ex: submitit.Executor, jobs: Sequence[Callable[[], Any]], commands: Sequence[str], hint: str
) -> list[submitit.Job]:
    """Submit ``jobs`` (a job array on SLURM when there are several); ``commands`` say what each
    runs, for the message when SLURM refuses them."""
    from submitit.core.utils import FailedJobError

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # submitit echoes sbatch's error; we word it
            return ex.submit_array(list(jobs))
    except (FailedJobError, subprocess.SubprocessError, OSError) as err:
        raise refusal(str(err) or said.getvalue(), commands, hint) from None


def refusal(text: str, commands: Sequence[str], hint: str) -> ClusterError:
    """SLURM's own words on a refused submission, with what the job would have run."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    message = "; ".join(lines) or "sbatch failed without a message"
    if any(marker in message.lower() for marker in UNREACHABLE):
        return no_slurm(lines[-1], hint)
    more = f" (and {len(commands) - 1} more)" if len(commands) > 1 else ""
    return ClusterError(f"SLURM refused the job: {message}; the job: {commands[0]}{more}")


# ----------------------------------------------------------------------------- inside a job
def master_port(job_id: str) -> int:
    """A port every task of a job derives alike from its id (and another job most likely not)."""
    return 20_000 + zlib.crc32(job_id.encode()) % 20_000


def torch_env(env: submitit.JobEnvironment) -> dict[str, str]:
    """The variables ``torch.distributed``'s env:// rendezvous reads (camlt.distributed.setup),
    from where SLURM (or the local executor) placed this task. On one node the rendezvous stays
    on the loopback, which always resolves; across nodes it is the first node of the job."""
    return {
        "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
        "MASTER_ADDR": "127.0.0.1" if env.num_nodes <= 1 else env.hostnames[0],
        "MASTER_PORT": str(master_port(env.job_id)),
    }


def local_gpu_env(gpus: int) -> dict[str, str | None]:
    """submitit's local executor hides every GPU it was not asked for (CUDA_VISIBLE_DEVICES="");
    a local job sees what ``camlt train`` in this shell would: all of them, or the first ``gpus``."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus:
        return {"CUDA_VISIBLE_DEVICES": seen}
    ids = [i for i in seen.split(",") if i] if seen is not None else [str(i) for i in range(gpus)]
    if len(ids) < gpus:
        raise ClusterError(
            f"--gpus-per-node {gpus}, but CUDA_VISIBLE_DEVICES={seen!r} shows {len(ids)} GPUs"
        )
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids[:gpus])}


def job_env(kind: str, res: Resources) -> dict[str, str | None]:
    """Variables a job sets for itself (None: unset); SLURM sets the GPUs of its allocation."""
    return local_gpu_env(res.gpus_per_node) if kind == "local" else {}


def apply_env(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """``base`` with ``changes`` made (None: unset)."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def set_env(changes: dict[str, str | None]) -> None:
    """Make ``changes`` in this process's environment (None: unset)."""
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class TrainJob:
    """``camlt train`` inside a job: one process per task, ranks from submitit's JobEnvironment.

    It always resumes: ``camlt submit`` refused a directory holding another run before queueing,
    so whatever the directory holds now is this job's own progress (a requeue after a preemption,
    a time-out or ``scontrol requeue``), and ``engine.train`` continues it bit for bit.
    """

    cfg: DictConfig
    run_dir: Path
    env: dict[str, str | None] = field(default_factory=dict)

    def __call__(self) -> dict:
        import submitit

        from camlt.engine import train

        set_env({**torch_env(submitit.JobEnvironment()), **self.env})
        print(f"run directory: {self.run_dir}", flush=True)
        return train(self.cfg, self.run_dir, resume=True)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or time-out: requeue the same job (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@dataclass
class CommandJob:
    """One command as a job, its output appended to ``log``; for the results tables, whose rows
    are ``camlt train ... --resume`` commands (a requeued one resumes).

    ``after`` runs in the job once the command has succeeded, and its value is the job's result:
    what only the machine that ran it can tell (its GPU, for the table's footer).
    """

    command: list[str]
    log: Path
    threads: int | None = None
    env: dict[str, str | None] = field(default_factory=dict)
    after: Callable[[], Any] | None = None

    def __call__(self) -> Any:
        changes = dict(self.env)
        if self.threads:
            changes["OMP_NUM_THREADS"] = str(self.threads)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                self.command,
                env=apply_env(dict(os.environ), changes),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it stops its data workers too
            )
        try:
            code = proc.wait()
        except BaseException:  # cancelled (SIGINT), or preempted (submitit's SystemExit)
            end_group(proc)
            raise
        if code:
            raise RuntimeError(f"exit {code} of {shlex.join(self.command)}; its output: {self.log}")
        return self.after() if self.after else None

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def end_group(proc: subprocess.Popen, wait_s: float = 0.5) -> None:
    """Stop a job's command at once: the local executor kills the job itself a second later, and
    an orphan would go on training. Its last checkpoint stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- following jobs
def slurm_states() -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} of this user's jobs that squeue still knows; None if it failed.

    squeue, not sacct: a cluster without accounting (``sacct`` disabled) still answers it, and
    it keeps ended jobs for MinJobAge (5 minutes by default).
    """
    cmd = ["squeue", "-h", "-r", "-t", "all", "-u", str(os.getuid()), "-o", "%i|%T|%r"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:
        return None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def states(jobs: Sequence[submitit.Job]) -> dict[str, tuple[str, str]] | None:
    """One squeue call for every SLURM job being followed (None: no SLURM job, or no answer)."""
    if not any(is_slurm(job) for job in jobs):
        return None
    return slurm_states()


def is_slurm(job: submitit.Job) -> bool:
    return type(job).__name__ == "SlurmJob"


def lead(job: submitit.Job) -> submitit.Job:
    """Task 0: rank 0 of a multi-task job, whose result and logs stand for the job."""
    return job.task(0) if job.num_tasks > 1 else job


def has_result(job: submitit.Job) -> bool:
    return lead(job).paths.result_pickle.exists()


def finished(job: submitit.Job, known: dict[str, tuple[str, str]] | None) -> bool:
    """Whether the job will not run again (succeeded, failed, cancelled...).

    ``known``: ``states()``; a SLURM job squeue no longer lists ended minutes ago.
    """
    if has_result(job):
        return True
    if not is_slurm(job):
        return job.done()
    if known is None:
        return False
    state = known.get(job.job_id)
    return state is None or state[0] in ENDED


def log_paths(job: submitit.Job) -> tuple[Path, Path]:
    """(stdout, stderr) of task 0; each task writes its own pair beside them."""
    paths = lead(job).paths
    return paths.stdout, paths.stderr


def outcome(job: submitit.Job, known: dict[str, tuple[str, str]] | None = None) -> Any:
    """The result of a finished job, or JobFailed naming its log files (``known``: ``states()``,
    for the state a SLURM job ended in)."""
    from submitit.core.utils import pickle_load

    state = (known or {}).get(job.job_id, ("", ""))[0]
    path = lead(job).paths.result_pickle
    deadline = time.time() + (RESULT_GRACE_S if is_slurm(job) else 0)
    while not path.exists() and time.time() < deadline:
        time.sleep(0.5)
    out, err = log_paths(job)
    where = f"see {err} (output {out})"
    if not path.exists():
        said = f" ({state})" if state else ""
        raise JobFailed(f"job {job.job_id} ended{said} without a result; {where}")
    kind, value = pickle_load(path)
    if kind == "success":
        return value
    last = [line for line in str(value).strip().splitlines() if line.strip()]
    raise JobFailed(f"job {job.job_id} failed: {last[-1] if last else 'no trace'}; {where}")


def cancel(job: submitit.Job, wait_s: float = 15) -> None:
    """Stop a job; a local one is waited for, so nothing of it runs once this returns."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        job.cancel(check=False)
    deadline = time.time() + wait_s
    while not is_slurm(job) and not job.done() and time.time() < deadline:
        time.sleep(0.1)


def wait(job: submitit.Job, poll_s: float = 1.0, say: Callable[[str], None] = print) -> Any:
    """Follow a job to its end, telling its state as it changes (a pending one says why).

    Ctrl-C stops a local job (it shares this terminal); a SLURM job goes on without us.
    """
    told = None
    try:
        while True:
            known = states([job])
            state = (known or {}).get(job.job_id)
            if state and state != told:
                why = f" ({state[1]})" if state[1] not in ("None", "") else ""
                say(f"job {job.job_id}: {state[0].lower()}{why}")
                told = state
            if finished(job, known):
                return outcome(job, known)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if not is_slurm(job):
            raise
        raise ClusterError(
            f"stopped following job {job.job_id}; it goes on (squeue -j {job.job_id}, "
            f"scancel {job.job_id})"
        ) from None


# ----------------------------------------------------------------------------- camlt submit
LOCAL_HINT = (
    "run on this machine with `camlt train CONFIG ...` or `camlt submit --local CONFIG ...`"
)


def check_world(cfg: DictConfig, res: Resources) -> None:
    """A global batch the job's processes cannot share evenly, refused before anything queues."""
    if cfg.train.batch_size % res.world:
        raise ClusterError(
            f"train.batch_size={cfg.train.batch_size} is the global batch and must divide evenly "
            f"over the job's {res.world} processes ({res.nodes} node(s) x {res.tasks_per_node}); "
            "choose another batch size or process count"
        )


def submit_train(
    cfg: DictConfig,
    run_dir: Path,
    resume: bool,
    kind: str,
    res: Resources,
    command: str,
    folder: Path | None = None,
) -> submitit.Job:
    """Queue ``camlt train``'s run of ``cfg`` in ``run_dir``; its logs go to ``folder``
    (default RUN_DIR/submitit). ``camlt train``'s own refusals come first, here, not in the job."""
    from camlt.lifecycle import prepare_run_dir
    from camlt.preflight import check_run
    from camlt.rundir import check_owned

    check_run(cfg)
    check_world(cfg, res)
    check_owned(run_dir)
    prepare_run_dir(cfg, run_dir, resume)
    res = replace(res, name=f"camlt-{run_dir.name}")
    ex = executor(kind, folder or run_dir / "submitit", res, LOCAL_HINT)
    job = TrainJob(cfg, run_dir.absolute(), job_env(kind, res))
    return submit(ex, [job], [command], LOCAL_HINT)[0]


def describe(job: submitit.Job, kind: str, res: Resources) -> str:
    """What was submitted and where its logs go."""
    out, err = log_paths(job)
    gpus = f", {res.gpus_per_node} GPUs each" if res.gpus_per_node else ""
    lines = [
        f"submitted job {job.job_id} ({kind}: {res.nodes} node(s) x {res.tasks_per_node} "
        f"process(es){gpus})",
        f"  output: {out}",
        f"  errors: {err}",
    ]
    if res.world > 1:
        lines.append(f"  (task N writes {job.job_id}_N_log.out/.err in the same folder)")
    if kind == "slurm":
        lines.append(f"  follow it: squeue -j {job.job_id}; stop it: scancel {job.job_id}")
    return "\n".join(lines)
