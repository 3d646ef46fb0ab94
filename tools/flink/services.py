"""A local Flink for the job: an embedded job server, or a standalone cluster.

Beam's Flink job-server jars are not served by the Maven mirror of this machine, but
the Beam 2.50 Flink 1.16 runner and Beam's Java job service are, with every dependency
(``pom.xml`` beside this file). That one classpath runs:

* the job server (``FlinkJobServerDriver``) with an embedded Flink (``[local]``): the
  Python SDK submits with ``--runner PortableRunner --environment_type LOOPBACK``;
* a standalone session cluster, without a Flink distribution: one JobManager
  (``StandaloneSessionClusterEntrypoint``), TaskManagers (``TaskManagerRunner``), a job
  server pointed at the JobManager's REST port, and a Python SDK worker pool that the
  TaskManagers reach with ``--environment_type EXTERNAL``.

Every process binds free loopback ports, writes a log under the state folder, and is
stopped by the PID recorded in ``services.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.procs import ProcessError, free_port, log_tail, port_open, spawn, stop_pid, wait_until

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().with_name("pom.xml")
CACHE = Path(os.environ.get("FLINK_TOOLS_HOME", ROOT / ".cache" / "flink"))
STATE_FILE = "services.json"
# Flink 1.16 on Java 17 reflects into these java.base packages.
_OPENS = (
    "java.lang",
    "java.util",
    "java.lang.reflect",
    "java.io",
    "java.net",
    "java.nio",
    "sun.nio.ch",
    "java.util.concurrent",
    "java.util.concurrent.atomic",
    "java.text",
    "java.time",
)
JVM_FLAGS = (
    *(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in _OPENS),
    # Without it the JobManager and TaskManager die with IllegalAccessError (NetUtils).
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
)
# Measured here: these settings start a TaskManager without Flink's shell scripts (which
# would derive them). Network memory: 64m was too little for parallelism 2, and 256m too
# little for the whole job with the Kinesis sink and file outputs ("Insufficient number
# of network buffers: required 512, but only 476 available"); 512m runs it.
TASKMANAGER_CONF = {
    "taskmanager.cpu.cores": "2",
    "taskmanager.memory.framework.heap.size": "128m",
    "taskmanager.memory.task.heap.size": "384m",
    "taskmanager.memory.managed.size": "128m",
    "taskmanager.memory.framework.off-heap.size": "128m",
    "taskmanager.memory.task.off-heap.size": "0m",
    "taskmanager.memory.network.min": "512m",
    "taskmanager.memory.network.max": "512m",
    "taskmanager.memory.jvm-metaspace.size": "256m",
    "taskmanager.memory.jvm-overhead.min": "192m",
    "taskmanager.memory.jvm-overhead.max": "192m",
}
TASKMANAGER_JVM = (
    "-Xmx512m",
    "-Xms512m",
    "-XX:MaxDirectMemorySize=700m",
    "-XX:MaxMetaspaceSize=256m",
)
JOBMANAGER_JVM = ("-Xmx512m", "-Xms512m")
STARTUP_TIMEOUT = 120.0


class FlinkToolsError(RuntimeError):
    """The classpath could not be fetched or a service did not start."""


def lib_dir() -> Path:
    return CACHE / "lib"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def fetch_classpath(quiet: bool = False) -> Path:
    """Copies the job server's jars into ``.cache/flink/lib`` (once per pom change)."""
    lib = lib_dir()
    stamp = lib / f".complete-{_pom_digest()}"
    if stamp.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FlinkToolsError("mvn (Maven) is needed to fetch the Flink job server's jars")
    tmp = CACHE / "lib.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(
            f"==> fetching the Flink job server's jars into {lib} (about a minute)",
            file=sys.stderr,
            flush=True,
        )
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise FlinkToolsError(f"mvn dependency:copy-dependencies failed:\n{tail}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.touch()
    return lib


def _java() -> str:
    home = os.environ.get("FLINK_JAVA_HOME")
    if home:
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise FlinkToolsError("java (17) is needed to run Flink")
    return java


def _java_cmd(main_class: str, jvm: tuple[str, ...], args: list[str]) -> list[str]:
    return [
        _java(),
        *jvm,
        *JVM_FLAGS,
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
        "-cp",
        f"{lib_dir()}/*",
        main_class,
        *args,
    ]


@dataclasses.dataclass
class Service:
    name: str
    pid: int
    log: str


@dataclasses.dataclass
class FlinkServices:
    """The processes of one local Flink set-up and how a pipeline reaches them.

    Attributes:
        state_dir: Folder with the logs, the Flink configs and ``services.json``.
        mode: ``embedded`` or ``cluster``.
        job_endpoint: ``localhost:PORT`` of the job server.
        rest_port: The JobManager's REST port (cluster only).
        worker_pool: ``localhost:PORT`` of the Python SDK worker pool (cluster only).
        services: Every started process, in start order.
    """

    state_dir: str
    mode: str
    job_endpoint: str = ""
    rest_port: int | None = None
    worker_pool: str | None = None
    services: list[Service] = dataclasses.field(default_factory=list)

    def pipeline_args(self, parallelism: int = 2) -> list[str]:
        """The Beam flags that submit a pipeline to this Flink."""
        args = [
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            self.job_endpoint,
            "--parallelism",
            str(parallelism),
        ]
        if self.worker_pool:
            args += ["--environment_type", "EXTERNAL", "--environment_config", self.worker_pool]
        else:
            args += ["--environment_type", "LOOPBACK"]
        return args

    def pid_of(self, name: str) -> int:
        return next(s.pid for s in self.services if s.name == name)

    def logs(self) -> str:
        """The tail of every service's log, for a failure message."""
        return "\n".join(
            f"--- {s.name} (pid {s.pid}) {s.log}\n{log_tail(Path(s.log), 30)}"
            for s in self.services
        )

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> FlinkServices:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        data["services"] = [Service(**s) for s in data["services"]]
        return cls(**data)

    def stop(self) -> None:
        """Stops every process by its PID, the last started first."""
        for service in reversed(self.services):
            stop_pid(service.pid)

    def _start(
        self,
        name: str,
        cmd: list[str],
        waiting_for: str,
        ready,
        quiet: bool,
        env: dict[str, str] | None = None,
    ) -> int:
        """Starts ``cmd`` as service ``name``, waits until ``ready()``; returns its PID."""
        log = Path(self.state_dir) / f"{name}.log"
        proc = spawn(cmd, log, env=env)
        self.services.append(Service(name, proc.pid, str(log)))
        self.save()
        wait_until(
            waiting_for, ready, pid=proc.pid, log_path=log, timeout=STARTUP_TIMEOUT, quiet=quiet
        )
        return proc.pid


def _write_conf(folder: Path, conf: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flink-conf.yaml").write_text("".join(f"{k}: {v}\n" for k, v in conf.items()))
    return folder


def _start_job_server(services: FlinkServices, flink_master: str, quiet: bool) -> None:
    job_port, artifact_port, expansion_port = free_port(), free_port(), free_port()
    services.job_endpoint = f"localhost:{job_port}"
    services.save()
    services._start(
        "job-server",
        _java_cmd(
            "org.apache.beam.runners.flink.FlinkJobServerDriver",
            ("-Xmx1g",),
            [
                f"--flink-master={flink_master}",
                "--job-host=localhost",
                f"--job-port={job_port}",
                f"--artifact-port={artifact_port}",
                f"--expansion-port={expansion_port}",
            ],
        ),
        f"the Flink job server on localhost:{job_port}",
        lambda: port_open(job_port),
        quiet,
    )


def _registered_taskmanagers(rest_port: int) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{rest_port}/taskmanagers", timeout=2
        ) as response:
            return len(json.load(response).get("taskmanagers", []))
    except (OSError, ValueError):
        return 0


def start_taskmanager(
    services: FlinkServices,
    index: int,
    slots: int = 2,
    extra_conf: dict[str, str] | None = None,
    quiet: bool = False,
) -> int:
    """Starts TaskManager ``tm-<index>`` and waits until the JobManager counts it."""
    state = Path(services.state_dir)
    jm_conf = (state / "jobmanager" / "flink-conf.yaml").read_text()
    conf = dict(line.split(": ", 1) for line in jm_conf.splitlines() if ": " in line)
    conf.update(TASKMANAGER_CONF)
    conf.update(
        {
            "taskmanager.numberOfTaskSlots": str(slots),
            "taskmanager.host": "localhost",
            "taskmanager.bind-host": "localhost",
            "taskmanager.resource-id": f"tm-{index}",
        }
    )
    conf.update(extra_conf or {})
    folder = _write_conf(state / f"tm-{index}", conf)
    before = _registered_taskmanagers(services.rest_port or 0)
    name = f"taskmanager-{index}"
    return services._start(
        name,
        _java_cmd(
            "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
            TASKMANAGER_JVM,
            ["--configDir", str(folder)],
        ),
        f"TaskManager {index} to register with the JobManager",
        lambda: _registered_taskmanagers(services.rest_port or 0) > before,
        quiet,
    )


def start_embedded(state_dir: Path, quiet: bool = False) -> FlinkServices:
    """Starts a job server with an embedded Flink (``[local]``) for LOOPBACK pipelines."""
    fetch_classpath(quiet)
    state_dir.mkdir(parents=True, exist_ok=True)
    services = FlinkServices(str(state_dir), "embedded")
    try:
        _start_job_server(services, "[local]", quiet)
    except BaseException:
        services.stop()
        raise
    return services


def start_cluster(
    state_dir: Path,
    *,
    taskmanagers: int = 2,
    slots: int = 2,
    extra_conf: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    quiet: bool = False,
) -> FlinkServices:
    """Starts a JobManager, ``taskmanagers`` TaskManagers, a job server and a worker pool.

    ``worker_env`` is added to the worker pool's environment: the SDK workers, where the
    Kinesis sink runs, take their AWS credentials from it (boto3's default chain), not
    from the process that submits the job.
    """
    fetch_classpath(quiet)
    state_dir.mkdir(parents=True, exist_ok=True)
    services = FlinkServices(str(state_dir), "cluster")
    try:
        rest_port = free_port()
        conf = {
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": str(free_port()),
            "jobmanager.bind-host": "localhost",
            "rest.address": "localhost",
            "rest.bind-address": "localhost",
            "rest.port": str(rest_port),
            "blob.server.port": str(free_port()),
            "jobmanager.memory.process.size": "1024m",
            "parallelism.default": "1",
            # The cluster's classpath already holds Beam's runner; a job jar's copy of the
            # same classes in a child-first loader breaks Beam's vendored Netty on the
            # second job of a TaskManager (IllegalAccessError, then "No client connected
            # within timeout").
            "classloader.resolve-order": "parent-first",
            # A production-like restart strategy: a failed task (a lost TaskManager, a
            # bundle that fails) restarts its region, three times at most. Beam 2.50's
            # job server applies --number_of_execution_retries to streaming jobs only.
            "restart-strategy": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": "3",
            "restart-strategy.fixed-delay.delay": "1 s",
            **(extra_conf or {}),
        }
        folder = _write_conf(state_dir / "jobmanager", conf)
        services.rest_port = rest_port
        services._start(
            "jobmanager",
            _java_cmd(
                "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
                JOBMANAGER_JVM,
                ["--configDir", str(folder)],
            ),
            f"the Flink JobManager's REST API on localhost:{rest_port}",
            lambda: _rest_ok(rest_port),
            quiet,
        )
        for index in range(taskmanagers):
            start_taskmanager(services, index, slots, extra_conf, quiet)
        _start_worker_pool(services, quiet, worker_env)
        _start_job_server(services, f"localhost:{rest_port}", quiet)
    except BaseException:
        services.stop()
        raise
    return services


def _rest_ok(rest_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/overview", timeout=2):
            return True
    except OSError:
        return False


def _start_worker_pool(
    services: FlinkServices, quiet: bool, worker_env: dict[str, str] | None = None
) -> None:
    port = free_port()
    env = {**os.environ, **(worker_env or {})}
    # The pool starts each worker as a bare `python`: this interpreter's folder (the
    # project's virtualenv) must come first on PATH, or workers lack apache_beam.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    services.worker_pool = f"localhost:{port}"
    services.save()
    services._start(
        "worker-pool",
        [
            sys.executable,
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={port}",
        ],
        f"the Python SDK worker pool on localhost:{port}",
        lambda: port_open(port),
        quiet,
        env=env,
    )


def wait_for_job_state(rest_port: int, states: set[str], timeout: float) -> list[dict]:
    """Polls the JobManager until a job is in one of ``states``; returns the job list."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/jobs", timeout=2) as r:
                jobs = json.load(r).get("jobs", [])
        except (OSError, ValueError):
            jobs = []
        if any(job["status"] in states for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise ProcessError(f"no Flink job reached {sorted(states)} in {timeout:.0f}s: {jobs}")
        time.sleep(0.2)  # poll interval


# ------------------------------------------------------------------ REST (jobs)


def _rest(rest_port: int, path: str, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{rest_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text else {}


def running_job(rest_port: int, timeout: float) -> str:
    """The id of the (one) RUNNING job, waiting up to ``timeout`` seconds for it."""
    jobs = wait_for_job_state(rest_port, {"RUNNING"}, timeout)
    return next(job["id"] for job in jobs if job["status"] == "RUNNING")


def job_status(rest_port: int, job_id: str) -> str:
    return _rest(rest_port, f"/jobs/{job_id}")["state"]


def cancel_job(rest_port: int, job_id: str) -> None:
    """Cancels a job (no final watermark: nothing is drained)."""
    _rest(rest_port, f"/jobs/{job_id}?mode=cancel", method="PATCH")


def stop_with_savepoint(rest_port: int, job_id: str, target: str, timeout: float) -> str:
    """Stops a job with a savepoint, without draining; returns the savepoint's path."""
    trigger = _rest(
        rest_port, f"/jobs/{job_id}/stop", "POST", {"targetDirectory": target, "drain": False}
    )["request-id"]
    deadline = time.monotonic() + timeout
    while True:
        status = _rest(rest_port, f"/jobs/{job_id}/savepoints/{trigger}")
        if status["status"]["id"] == "COMPLETED":
            operation = status["operation"]
            if "failure-cause" in operation:
                raise ProcessError(f"the savepoint failed: {operation['failure-cause']}")
            return operation["location"]
        if time.monotonic() > deadline:
            raise ProcessError(f"no savepoint in {timeout:.0f}s: {status}")
        time.sleep(0.2)  # poll interval


def taskmanagers_of(rest_port: int, job_id: str) -> set[str]:
    """The resource ids (``tm-<index>``) of the TaskManagers running the job's tasks."""
    found = set()
    for vertex in _rest(rest_port, f"/jobs/{job_id}")["vertices"]:
        hosts = _rest(rest_port, f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")
        found.update(tm["taskmanager-id"] for tm in hosts["taskmanagers"])
    return found


def latest_checkpoint(rest_port: int, job_id: str) -> dict:
    """The latest completed checkpoint of a job (``id``, ``state_size``...), or ``{}``."""
    stats = _rest(rest_port, f"/jobs/{job_id}/checkpoints")
    return (stats.get("latest") or {}).get("completed") or {}


def job_failovers(rest_port: int, job_id: str) -> int:
    """How many failures the job recovered from or failed by (its exception history)."""
    history = _rest(rest_port, f"/jobs/{job_id}/exceptions").get("exceptionHistory") or {}
    return len(history.get("entries") or [])
