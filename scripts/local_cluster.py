"""A real single-node SLURM cluster and an S3 server on this machine, to run the cluster path end to end
(tests/test_cluster.py, which also records results/benchmarks/cluster.json), or to try profiles/slurm by
hand:

    python scripts/local_cluster.py              # bring both up, print how to use them; Ctrl-C stops them
    python scripts/local_cluster.py -- COMMAND   # run COMMAND inside (e.g. snakemake --profile profiles/slurm)

Both live in private namespaces. The network namespace has loopback only: the daemons (munged,
slurmctld, slurmd, the S3 server) listen there, nothing outside can reach them, and nothing run inside
(the daemons, Snakemake, its jobs, DVC) can reach any other address. The mount namespace shows the
cluster's configuration at SLURM's standard path (/etc/slurm/slurm.conf), as on a real cluster, where
jobs' nested `srun` calls find it without SLURM_CONF (which the executor plugin's job step drops).
Commands enter both through `LocalCluster.command`. Configuration, state and logs live in one folder.

SLURM is Debian's `slurm-wlm` and `munge` (`apt-get install slurmctld slurmd slurm-client munge`), run as
root. The node is this machine as `slurmd -C` sees it (its real CPUs and memory). There is no
accounting database: job states come from `squeue`, which keeps finished jobs for `MinJobAge` seconds,
the status source snakemake-executor-plugin-slurm documents for clusters without `sacct`
(`slurm_status_command: squeue`). Memory limits are enforced by polling (jobacct_gather/linux with
OverMemoryKill, every second), which needs no cgroup delegation: a job over its `--mem` is killed and
ends OUT_OF_MEMORY. A job's processes are tracked by process group (proctrack/pgid; real clusters use cgroups), so
a cancelled job leaves none behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")
PACKAGES = "slurmctld slurmd slurm-client munge iproute2"
# Finished jobs stay visible to squeue this long (the executor plugin wants at least 3 status intervals;
# the tests and the benchmark read every job's request and state back after a run).
MIN_JOB_AGE_S = 36000
LOOPBACK_EXTRA = "192.0.2.1"


def unavailable() -> str | None:
    """Why a local cluster cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd launches jobs; the network namespace needs CAP_SYS_ADMIN)"
    missing = [tool for tool in (*DAEMONS, *CLIENTS, "unshare", "nsenter", "ip") if not _which(tool)]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y {PACKAGES}"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace (unshare --net: {probe.stderr.strip()})"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    line: str  # slurmd -C's NodeName line (sockets, cores, threads as detected)

    @classmethod
    def detect(cls) -> "Node":
        """This machine as slurmd sees it."""
        line = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        fields = dict(part.split("=", 1) for part in line.split())
        return cls(fields["NodeName"], int(fields["CPUs"]), int(fields["RealMemory"]), line)


class LocalCluster:
    """Start with `start()` (or `with LocalCluster(folder) as cluster:`), run commands inside with
    `command(...)`, stop with `stop()`: every process in the namespace is ended, whatever state the
    daemons are in."""

    def __init__(self, folder: Path, s3: bool = False):
        self.folder = Path(folder)
        self.node = Node.detect()
        self.with_s3 = s3
        self.s3_port = 9000
        self._holder: subprocess.Popen | None = None
        self._daemons: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    # --- inside the namespace -------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        assert self._holder is not None, "the cluster is not started"
        return f"/proc/{self._holder.pid}/ns/net"

    @property
    def conf(self) -> Path:
        """slurm.conf as written here (inside, the same file is /etc/slurm/slurm.conf)."""
        return self.folder / "etc" / "slurm.conf"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, base: dict | None = None) -> dict:
        """The environment of commands run inside: no SLURM_CONF (inside, the standard path holds this
        cluster's), and S3 credentials the local server accepts (so that no client looks for real ones)."""
        env = dict(os.environ if base is None else base)
        env.pop("SLURM_CONF", None)
        if self.with_s3:
            env.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1",
                       AWS_EC2_METADATA_DISABLED="true")
        return env

    def command(self, args: list[str], cwd: Path | str | None = None) -> list[str]:
        """`args` run inside the cluster's namespaces, in `cwd` (default: the current directory)."""
        mounts = f"/proc/{self._holder.pid}/ns/mnt"
        return ["nsenter", f"--net={self.namespace}", f"--mount={mounts}", f"--wd={Path(cwd or os.getcwd()).resolve()}",
                "--", *args]

    def run(self, args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env())
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result = subprocess.run(self.command(args, kwargs.pop("cwd", None)), **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    # --- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "logs", "etc"):
            (self.folder / sub).mkdir(exist_ok=True)
        os.chmod(self.folder, 0o700)  # munged refuses a key or socket others can reach
        self.conf.write_text(self.slurm_conf())
        # SLURM's daemons resolve their listening address with AI_ADDRCONFIG, which ignores 127.0.0.0/8:
        # loopback also gets a documentation-range address (RFC 5737), still on lo, so nothing leaves.
        setup = (f"ip link set lo up && ip addr add {LOOPBACK_EXTRA}/32 dev lo && mkdir -p /etc/slurm && "
                 f"mount --bind {self.conf.parent} /etc/slurm && exec sleep infinity")
        self._holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "--",
                                         "sh", "-c", setup], stdin=subprocess.DEVNULL)
        self._wait(lambda: self._loopback_up(), timeout, "the namespaces")
        self._start_munge(timeout)
        self._daemons["slurmctld"] = self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._wait(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, timeout, "slurmctld")
        self._daemons["slurmd"] = self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self.idle, timeout, f"node {self.node.name} to be idle in sinfo")
        if self.with_s3:
            self._daemons["s3"] = self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                                     "-p", str(self.s3_port)])
            self._wait(lambda: self._port_open(self.s3_port), timeout, "the S3 server")

    def idle(self) -> bool:
        states = self.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], check=False).stdout.split()
        return states == [self.node.name, "idle"]

    def stop(self) -> None:
        """End every process in the namespace (daemons, jobs, job steps, clients), then the namespace."""
        if self._holder is None:
            return
        if self._holder.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                members = self._members()
                for pid in members:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
                while members and time.monotonic() < deadline:
                    members = [pid for pid in members if _alive(pid)]
                    time.sleep(0.1)
        for process in self._daemons.values():
            process.wait(timeout=10)
        for log in self._logs:
            log.close()
        self._holder.kill()
        self._holder.wait()
        self._holder = None

    def _members(self) -> list[int]:
        """Every process in this cluster's network namespace but the one holding it."""
        target = os.readlink(self.namespace)
        members = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self._holder.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == target:
                        members.append(int(entry.name))
                except OSError:  # gone, or not ours to read
                    continue
        return members

    # --- pieces ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / "logs" / f"{name}.out", "ab")
        self._logs.append(log)
        return subprocess.Popen(self.command(args), env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)

    def _start_munge(self, timeout: float) -> None:
        key = self.folder / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        self._daemons["munged"] = self._spawn("munged", [
            _which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={self.folder / 'munged.pid'}", f"--log-file={self.folder / 'logs' / 'munged.log'}",
            f"--seed-file={self.folder / 'munged.seed'}"])
        self._wait(self.munge_socket.exists, timeout, "munged")

    @property
    def munge_socket(self) -> Path:
        return self.folder / "munge.socket"

    def slurm_conf(self) -> str:
        node, folder = self.node, self.folder
        hardware = " ".join(part for part in node.line.split() if not part.startswith(("NodeName=", "UpTime=")))
        return "\n".join([
            "# A single-node cluster on loopback (scripts/local_cluster.py)",
            "ClusterName=gatedsae",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'logs' / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'logs' / 'slurmd.log'}",
            # A job's processes found by process group, not by parentage: when scancel's SIGTERM ends a job's
            # shell, the Snakemake under it is re-parented to init, and proctrack/linuxproc (parentage) lost it,
            # leaving it running after the job was CANCELLED; nothing here leaves its process group.
            "ProctrackType=proctrack/pgid", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=task=1",
            "JobAcctGatherParams=OverMemoryKill",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            f"MinJobAge={MIN_JOB_AGE_S}", "ReturnToService=2", "MpiDefault=none",
            f"NodeName={node.name} NodeAddr=127.0.0.1 {hardware} State=UNKNOWN",
            f"PartitionName=local Nodes={node.name} Default=YES MaxTime=INFINITE State=UP",
            ""])

    def _loopback_up(self) -> bool:
        if self._holder.poll() is not None:
            raise RuntimeError(f"could not set up the namespaces (unshare exited {self._holder.returncode})")
        inside = self.run(["sh", "-c", "ip addr show lo; ls /etc/slurm"], check=False).stdout
        return LOOPBACK_EXTRA in inside and "slurm.conf" in inside

    def _port_open(self, port: int) -> bool:
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
        return self.run([sys.executable, "-c", probe], check=False).returncode == 0

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self._daemons.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 20) -> str:
        texts = []
        for log in sorted((self.folder / "logs").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            texts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(texts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    try:
        return re.search(r"\) (\w)", state.read_text()).group(1) != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    reason = unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    import tempfile

    with LocalCluster(Path(tempfile.mkdtemp(prefix="gatedsae-cluster-")), s3=True) as cluster:
        print(f"SLURM: node {cluster.node.name} idle ({cluster.node.cpus} CPUs, {cluster.node.memory_mb} MB); "
              f"S3 at {cluster.s3_endpoint}; configuration and logs in {cluster.folder}", flush=True)
        if argv:  # run one command inside, then stop
            return subprocess.run(cluster.command(argv), env=cluster.env()).returncode
        print("run commands inside with: " + " ".join(cluster.command(["<command>"])))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[1:] if args[:1] == ["--"] else args))
