"""A real single-node Apache Kafka broker (KRaft, broker+controller), run from Maven jars.

`make broker`, `fairfleet broker start|stop|status` and the pytest session fixture all use this
module. The jars (``org.apache.kafka:kafka_2.13`` plus a log4j2 binding) are resolved by Maven
from ``deploy/kafka/pom.xml`` into a cache folder once; the broker then runs as a plain
``java kafka.Kafka server.properties`` process with its state in a known folder:

    <state_dir>/broker.json         bootstrap address, ports, pid (written once ready)
    <state_dir>/server.properties   the generated broker config
    <state_dir>/logs/server.log     the broker's own log (log4j2)
    <state_dir>/data/               KRaft metadata and topic data

``start(..., scram_users={"alice": "secret"})`` makes the client listener SASL_PLAINTEXT with
SCRAM-SHA-256 instead: the credentials are written into the KRaft metadata at format time
(``StorageTool format --add-scram``), inter-broker traffic stays on a separate PLAINTEXT listener
on 127.0.0.1, and ``BrokerInfo.security_protocol`` says which protocol clients must speak. This is
how tests/integration/test_kafka_sasl.py checks KafkaConfig's SASL/SCRAM settings against a real
broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fairfleet.errors import BrokerError

KAFKA_VERSION = "4.1.1"
DEFAULT_HEAP = "512m"
SCRAM_MECHANISM = "SCRAM-SHA-256"


def repo_root() -> Path:
    """The source checkout this package runs from (editable install)."""
    return Path(__file__).resolve().parents[2]


def default_state_dir() -> Path:
    return Path(os.environ.get("FAIRFLEET_BROKER_DIR", str(Path.cwd() / ".fairfleet" / "broker")))


def default_libs_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    return Path(os.environ.get("FAIRFLEET_KAFKA_LIBS", str(cache / "fairfleet" / f"kafka-{KAFKA_VERSION}")))


@dataclass(frozen=True)
class BrokerInfo:
    """What a running broker is: where to connect and which process it is."""

    bootstrap: str
    port: int
    controller_port: int
    pid: int
    state_dir: str
    security_protocol: str = "PLAINTEXT"

    @property
    def log_file(self) -> Path:
        return Path(self.state_dir) / "logs" / "server.log"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"'{tool}' was not found on PATH; {hint}")
    return path


def resolve_jars(libs_dir: Path | None = None, quiet: bool = True) -> Path:
    """Resolve the Kafka broker's runtime jars with Maven into ``libs_dir`` (cached)."""
    libs = libs_dir or default_libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    mvn = _require("mvn", "install Apache Maven 3.8+ (Debian: apt-get install maven)")
    pom = repo_root() / "deploy" / "kafka" / "pom.xml"
    if not pom.exists():
        raise BrokerError(f"Broker pom not found at {pom}; run from a fairfleet source checkout.")
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(
            f"Maven could not resolve the Kafka jars (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {libs}.")
    marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_info(state_dir: Path | None = None) -> BrokerInfo | None:
    """The broker recorded in ``state_dir`` if its process is still alive, else None."""
    path = (state_dir or default_state_dir()) / "broker.json"
    if not path.exists():
        return None
    info = BrokerInfo(**json.loads(path.read_text()))
    return info if _pid_alive(info.pid) else None


def _properties(data_dir: Path, port: int, cport: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Large model payloads: 100 MB chunked updates pass in ~8 MB messages, but a topic may
        # raise max.message.bytes up to this broker-wide ceiling.
        "message.max.bytes=67108864",
        "replica.fetch.max.bytes=67108864",
        "socket.request.max.bytes=209715200",
        "auto.create.topics.enable=false",
        "log.retention.hours=168",
        "",
    ])


def _sasl_properties(data_dir: Path, port: int, cport: int, iport: int) -> str:
    """The default config with the client listener on SASL_PLAINTEXT (SCRAM-SHA-256).

    Inter-broker traffic uses a separate PLAINTEXT listener ``INTERNAL`` on 127.0.0.1.
    """
    plain = _properties(data_dir, port, cport)
    mech = SCRAM_MECHANISM.lower()
    replaced = {
        "listeners": f"CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{iport},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{port},INTERNAL://127.0.0.1:{iport}",
        "inter.broker.listener.name": "INTERNAL",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,CLIENT:SASL_PLAINTEXT",
    }
    lines = [
        f"{key}={replaced[key]}" if (key := line.split("=", 1)[0]) in replaced else line
        for line in plain.splitlines()
    ]
    lines += [
        f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
        f"listener.name.client.{mech}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "",
    ]
    return "\n".join(lines)


def _scram_args(scram_users: dict[str, str]) -> list[str]:
    """``--add-scram`` arguments for StorageTool format, one per user."""
    args: list[str] = []
    for name, password in scram_users.items():
        for value, what in ((name, "user name"), (password, "password")):
            if not value or any(c in value for c in ',=[]"'):
                raise BrokerError(
                    f"A SCRAM {what} must be non-empty without any of , = [ ] \". Found {value!r}."
                )
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
    return args


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def start(
    state_dir: Path | None = None,
    libs_dir: Path | None = None,
    port: int = 0,
    heap: str = DEFAULT_HEAP,
    timeout_s: float = 90.0,
    scram_users: dict[str, str] | None = None,
) -> BrokerInfo:
    """Start a broker in ``state_dir`` and wait until its admin API answers.

    With ``scram_users`` (user name -> password) the client listener is SASL_PLAINTEXT with
    SCRAM-SHA-256 and these users; readiness is then checked as the first of them.

    Raises BrokerError if one is already running there, or if it does not come up in time
    (the error includes the tail of the broker's log).
    """
    state = (state_dir or default_state_dir()).resolve()
    running = read_info(state)
    if running is not None:
        raise BrokerError(
            f"A broker is already running from {state} (pid {running.pid}) at "
            f"{running.bootstrap}; stop it first with `fairfleet broker stop`."
        )
    java = _require("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
    libs = resolve_jars(libs_dir)
    data_dir = state / "data"
    logs_dir = state / "logs"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a fresh single-node cluster each start: ports change
    data_dir.mkdir(parents=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cport = free_port()
    while cport == port:
        cport = free_port()
    props = state / "server.properties"
    extra: list[str] = []
    client_config: dict[str, str] | None = None
    if scram_users is None:
        props.write_text(_properties(data_dir, port, cport))
    else:
        if not scram_users:
            raise BrokerError("scram_users must name at least one user. Found an empty mapping.")
        extra = _scram_args(scram_users)
        iport = free_port()
        while iport in (port, cport):
            iport = free_port()
        props.write_text(_sasl_properties(data_dir, port, cport, iport))
        user, password = next(iter(scram_users.items()))
        client_config = {
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": SCRAM_MECHANISM,
            "sasl.username": user, "sasl.password": password,
        }
    log4j = state / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(log=logs_dir / "server.log"))
    classpath = f"{libs}/*"
    common = [
        java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC",
        f"-Dkafka.logs.dir={logs_dir}", f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
    ]
    fmt = subprocess.run(
        [*common, "kafka.tools.StorageTool", "format", "--config", str(props),
         "--cluster-id", uuid.uuid4().hex[:22], "--standalone", "--ignore-formatted", *extra],
        capture_output=True, text=True,
    )
    if fmt.returncode != 0:
        raise BrokerError(f"Formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
    stdout = open(logs_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [*common, "kafka.Kafka", str(props)],
        stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stdout.close()
    info = BrokerInfo(
        bootstrap=f"127.0.0.1:{port}", port=port, controller_port=cport, pid=proc.pid,
        state_dir=str(state),
        security_protocol="PLAINTEXT" if scram_users is None else "SASL_PLAINTEXT",
    )
    try:
        wait_ready(info.bootstrap, timeout_s, proc, client_config)
    except BrokerError:
        _kill(proc.pid, signal.SIGKILL)
        raise
    (state / "broker.json").write_text(json.dumps(asdict(info), indent=2))
    return info


def wait_ready(
    bootstrap: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    client_config: dict[str, str] | None = None,
) -> None:
    """Poll the TCP port, then the admin API, until the broker answers or time runs out.

    ``client_config`` holds extra librdkafka settings (e.g. SASL) for the admin client.
    """
    from confluent_kafka.admin import AdminClient

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"The broker process exited with code {proc.returncode} during startup.")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
        except OSError:
            time.sleep(0.3)
            continue
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
            admin.list_topics(timeout=5)
            return
        except Exception:
            time.sleep(0.5)
    raise BrokerError(f"The broker at {bootstrap} did not answer within {timeout_s:.0f} s.")


def _kill(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(state_dir: Path | None = None, timeout_s: float = 30.0) -> bool:
    """Stop the broker in ``state_dir`` cleanly (SIGTERM, then SIGKILL). False if none ran."""
    state = (state_dir or default_state_dir()).resolve()
    info = read_info(state)
    record = state / "broker.json"
    if info is None:
        record.unlink(missing_ok=True)
        return False
    _kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(info.pid):
        time.sleep(0.2)
    if _pid_alive(info.pid):
        _kill(info.pid, signal.SIGKILL)
    record.unlink(missing_ok=True)
    return True


def status(state_dir: Path | None = None) -> dict[str, object]:
    """A JSON-able status: running or not, and whether the admin API answers with topics."""
    info = read_info(state_dir)
    if info is None:
        return {"running": False, "state_dir": str((state_dir or default_state_dir()).resolve())}
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": info.bootstrap}).list_topics(timeout=5)
        topics = sorted(t for t in metadata.topics if not t.startswith("__"))
        answering = True
    except Exception:
        topics, answering = [], False
    return {
        **asdict(info),
        "running": True,
        "admin_api": answering,
        "topics": topics,
        "log_file": str(info.log_file),
    }
