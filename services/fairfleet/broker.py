"""A real single-node Apache Kafka broker (KRaft, broker+controller), run from Maven jars.

`make broker`, `fairfleet broker start|stop|status` and the pytest session fixture all use this
module. The jars (``org.apache.kafka:kafka_2.13`` plus a log4j2 binding) are resolved by Maven
from ``deploy/kafka/pom.xml`` into a cache folder once; the broker then runs as a plain
``java kafka.Kafka server.properties`` process with its state in a known folder:

    <state_dir>/cluster.json        the cluster's identity: cluster id and ports (kept for good)
    <state_dir>/broker.json         bootstrap address, ports, pid of the running process
    <state_dir>/server.properties   the generated broker config
    <state_dir>/logs/server.log     the broker's own log (log4j2)
    <state_dir>/data/               KRaft metadata and topic data

The data is kept: the first ``start`` in a folder formats the KRaft storage with a new cluster id
and records the id and the ports in ``cluster.json``; every later ``start`` (after ``stop``, a
crash or a kill -9) formats nothing and starts the same cluster on the same ports with all its
topics. A recorded port that another process holds is an error naming the port, never a reason
to start a different cluster. Only :func:`reset` (``fairfleet broker reset``) deletes the data.

``start(..., scram_users={"alice": "secret"})`` makes the client listener SASL_PLAINTEXT with
SCRAM-SHA-256 instead: the credentials are written into the KRaft metadata at format time
(``StorageTool format --add-scram``), inter-broker traffic stays on a separate PLAINTEXT listener
on 127.0.0.1, and ``BrokerInfo.security_protocol`` says which protocol clients must speak. This is
how tests/integration/test_kafka_sasl.py checks KafkaConfig's SASL/SCRAM settings against a real
broker.

``start(..., scram_users=..., acl_admin="admin")`` also turns on Kafka's standard authorizer
(``StandardAuthorizer``, KRaft): a client is then allowed only what an ACL grants it (``fairfleet
acls --apply`` creates a fleet's), except the super users: ``acl_admin`` (one of the SCRAM users;
it creates the ACLs and the topics) and ``User:ANONYMOUS``, the principal of the broker's own
PLAINTEXT inter-broker and controller listeners on 127.0.0.1 (so anything that connects to those
two loopback ports is a super user: this broker is for one host and for tests). The setting is
recorded in ``cluster.json`` and kept by every later start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fairfleet.errors import BrokerError
from fairfleet.supervisor.state import pid_alive

KAFKA_VERSION = "4.1.1"
DEFAULT_HEAP = "512m"
SCRAM_MECHANISM = "SCRAM-SHA-256"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
BROKER_PRINCIPAL = "User:ANONYMOUS"  # what the PLAINTEXT inter-broker and controller listeners see


def repo_root() -> Path:
    """The source checkout this package runs from (editable install)."""
    return Path(__file__).resolve().parents[2]


def default_state_dir() -> Path:
    return Path(os.environ.get("FAIRFLEET_BROKER_DIR", str(Path.cwd() / ".fairfleet" / "broker")))


def default_libs_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    return Path(
        os.environ.get("FAIRFLEET_KAFKA_LIBS", str(cache / "fairfleet" / f"kafka-{KAFKA_VERSION}"))
    )


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
        mvn,
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
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


def _is_broker_of(pid: int, state: Path) -> bool:
    """Is ``pid`` alive and the broker of ``state`` (not another process that reused the pid)?"""
    return pid_alive(pid, f"kafka.Kafka {state / 'server.properties'}")


def read_info(state_dir: Path | None = None) -> BrokerInfo | None:
    """The broker recorded in ``state_dir`` if its process is still alive, else None.

    A record whose process is gone (killed with -9, machine rebooted) or whose pid now belongs
    to another program is stale: it is ignored here and replaced by the next ``start``.
    """
    state = (state_dir or default_state_dir()).resolve()
    path = state / "broker.json"
    if not path.exists():
        return None
    try:
        info = BrokerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # half-written by a process that died while writing it
    return info if _is_broker_of(info.pid, state) else None


@dataclass(frozen=True)
class ClusterRecord:
    """What makes a restarted broker the same cluster: its id and its listener ports."""

    cluster_id: str
    port: int
    controller_port: int
    internal_port: int | None = None
    security_protocol: str = "PLAINTEXT"
    acl_admin: str | None = None  # the authorizer is on, with this SCRAM user as a super user

    def ports(self) -> dict[str, int]:
        named = {"client": self.port, "controller": self.controller_port}
        if self.internal_port is not None:
            named["inter-broker"] = self.internal_port
        return named


def read_cluster(state_dir: Path | None = None) -> ClusterRecord | None:
    """The cluster recorded in ``state_dir`` (``cluster.json``), or None for a new folder."""
    path = (state_dir or default_state_dir()).resolve() / "cluster.json"
    if not path.exists():
        return None
    try:
        return ClusterRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise BrokerError(
            f"{path} is not a valid cluster record ({exc}); the data in {path.parent / 'data'} "
            "is untouched. Fix the file, or delete everything with `fairfleet broker reset`."
        ) from exc


def _legacy_cluster(state: Path) -> ClusterRecord | None:
    """The record of a folder formatted before cluster.json existed (server.properties + meta)."""
    meta, props = state / "data" / "meta.properties", state / "server.properties"
    if not (meta.exists() and props.exists()):
        return None
    values = dict(
        line.split("=", 1)
        for line in (meta.read_text() + props.read_text()).splitlines()
        if "=" in line and not line.startswith("#")
    )
    ports = {
        name: int(port)
        for name, port in re.findall(r"(\w+)://[^:,]*:(\d+)", values.get("listeners", ""))
    }
    try:
        return ClusterRecord(
            cluster_id=values["cluster.id"],
            port=ports.get("PLAINTEXT", ports.get("CLIENT", 0)),
            controller_port=ports["CONTROLLER"],
            internal_port=ports.get("INTERNAL"),
            security_protocol="SASL_PLAINTEXT" if "CLIENT" in ports else "PLAINTEXT",
        )
    except KeyError:
        return None


def _port_free(port: int) -> bool:
    """Can a listener bind 127.0.0.1:``port``? (SO_REUSEADDR, like the JVM's server sockets.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _data_lock_held(data_dir: Path) -> bool:
    """Does a live process hold the JVM's lock on ``data_dir/.lock``?

    Kafka locks that file with a POSIX record lock, which the kernel releases when the process
    dies (also on kill -9): a leftover ``.lock`` file whose lock nobody holds is harmless and
    reused; a held one means another broker still runs on this data.
    """
    lock = data_dir / ".lock"
    if not lock.exists():
        return False
    with lock.open("rb+") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(fh, fcntl.LOCK_UN)
    return False


def _properties(data_dir: Path, port: int, cport: int) -> str:
    return "\n".join(
        [
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
        ]
    )


def _sasl_properties(
    data_dir: Path, port: int, cport: int, iport: int, acl_admin: str | None = None
) -> str:
    """The default config with the client listener on SASL_PLAINTEXT (SCRAM-SHA-256).

    Inter-broker traffic uses a separate PLAINTEXT listener ``INTERNAL`` on 127.0.0.1. With
    ``acl_admin`` the standard authorizer is on, with that user and the broker itself as super
    users (no ACL means no access).
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
    ]
    if acl_admin is not None:
        lines += [
            f"authorizer.class.name={AUTHORIZER}",
            f"super.users={BROKER_PRINCIPAL};User:{acl_admin}",
            "allow.everyone.if.no.acl.found=false",
        ]
    return "\n".join([*lines, ""])


def _scram_args(scram_users: dict[str, str]) -> list[str]:
    """``--add-scram`` arguments for StorageTool format, one per user."""
    args: list[str] = []
    for name, password in scram_users.items():
        for value, what in ((name, "user name"), (password, "password")):
            if not value or any(c in value for c in ',=[]"'):
                raise BrokerError(
                    f'A SCRAM {what} must be non-empty without any of , = [ ] ". Found {value!r}.'
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
    port_wait_s: float = 30.0,
    acl_admin: str | None = None,
) -> BrokerInfo:
    """Start the broker of ``state_dir`` and wait until its admin API answers.

    A new folder gets a new cluster (formatted, recorded in ``cluster.json``); a folder that
    holds one restarts that cluster with its data, on its recorded ports (``port`` must then be
    0 or the recorded port). With ``scram_users`` (user name -> password) the client listener
    is SASL_PLAINTEXT with SCRAM-SHA-256 and these users (written at format time, so only a new
    cluster takes them); readiness is then checked as the first of them. With ``acl_admin`` (one
    of ``scram_users``) the standard authorizer is on and that user is a super user (readiness
    is checked as it); a cluster keeps this choice for good (recorded in ``cluster.json``).

    Raises BrokerError if one is already running there, if a recorded port is still taken by
    another process after ``port_wait_s`` (a killed broker's connections linger briefly), or if it does not come up in time. No error path deletes data.
    """
    if acl_admin is not None and acl_admin not in (scram_users or {}):
        raise BrokerError(
            f"acl_admin must be one of the SCRAM users {sorted(scram_users or {})}. "
            f"Found {acl_admin!r}."
        )
    state = (state_dir or default_state_dir()).resolve()
    running = read_info(state)
    if running is not None:
        raise BrokerError(
            f"A broker is already running from {state} (pid {running.pid}) at "
            f"{running.bootstrap}; stop it first with `fairfleet broker stop`."
        )
    (state / "broker.json").unlink(missing_ok=True)  # stale: its process is gone
    java = _require(
        "java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)"
    )
    libs = resolve_jars(libs_dir)
    data_dir = state / "data"
    logs_dir = state / "logs"
    if _data_lock_held(data_dir):
        raise BrokerError(
            f"Another process holds the lock on {data_dir / '.lock'}: a broker not recorded in "
            f"{state / 'broker.json'} still runs on this data. Stop that process first."
        )
    record = read_cluster(state) or _legacy_cluster(state)
    if scram_users is not None and not scram_users:
        raise BrokerError("scram_users must name at least one user. Found an empty mapping.")
    protocol = "PLAINTEXT" if scram_users is None else "SASL_PLAINTEXT"
    if record is None:
        record = _new_cluster(port, protocol, acl_admin)
    else:
        _check_recorded(record, state, port, protocol, port_wait_s, acl_admin)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    props = state / "server.properties"
    client_config: dict[str, str] | None = None
    if record.internal_port is None:
        props.write_text(_properties(data_dir, record.port, record.controller_port))
    else:
        props.write_text(
            _sasl_properties(
                data_dir,
                record.port,
                record.controller_port,
                record.internal_port,
                record.acl_admin,
            )
        )
    if scram_users is not None:
        user = acl_admin or next(iter(scram_users))
        password = scram_users[user]
        client_config = {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": SCRAM_MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
        }
    log4j = state / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(log=logs_dir / "server.log"))
    classpath = f"{libs}/*"
    common = [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        f"-Dkafka.logs.dir={logs_dir}",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        classpath,
    ]
    if not (data_dir / "meta.properties").exists():  # a new cluster: the only time we format
        extra = _scram_args(scram_users) if scram_users is not None else []
        fmt = subprocess.run(
            [
                *common,
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(props),
                "--cluster-id",
                record.cluster_id,
                "--standalone",
                "--ignore-formatted",
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"Formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
    (state / "cluster.json").write_text(json.dumps(asdict(record), indent=2))
    stdout = open(logs_dir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [*common, "kafka.Kafka", str(props)],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stdout.close()
    info = BrokerInfo(
        bootstrap=f"127.0.0.1:{record.port}",
        port=record.port,
        controller_port=record.controller_port,
        pid=proc.pid,
        state_dir=str(state),
        security_protocol=record.security_protocol,
    )
    # Recorded at once (not only when ready): a start that times out leaves a process that
    # `fairfleet broker stop` must still find.
    (state / "broker.json").write_text(json.dumps(asdict(info), indent=2))
    try:
        wait_ready(info.bootstrap, timeout_s, proc, client_config)
    except BrokerError as exc:
        _kill(proc.pid, signal.SIGKILL)
        (state / "broker.json").unlink(missing_ok=True)
        raise BrokerError(f"{exc} Its log: {info.log_file}") from exc
    return info


def _new_cluster(port: int, protocol: str, acl_admin: str | None = None) -> ClusterRecord:
    """A new cluster id and free ports (``port`` for clients if given)."""
    taken = {port} if port else set()
    chosen: list[int] = []
    for _ in range(2 if protocol == "PLAINTEXT" else 3):
        candidate = free_port()
        while candidate in taken:
            candidate = free_port()
        taken.add(candidate)
        chosen.append(candidate)
    client = port or chosen.pop()
    return ClusterRecord(
        cluster_id=uuid.uuid4().hex[:22],
        port=client,
        controller_port=chosen[0],
        internal_port=chosen[1] if protocol != "PLAINTEXT" else None,
        security_protocol=protocol,
        acl_admin=acl_admin,
    )


def _check_recorded(
    record: ClusterRecord,
    state: Path,
    port: int,
    protocol: str,
    port_wait_s: float = 0.0,
    acl_admin: str | None = None,
) -> None:
    """A restart must be the same cluster: same client port, protocol, and all ports free."""
    where = state / "cluster.json"
    if port and port != record.port:
        raise BrokerError(
            f"The cluster in {state} listens on port {record.port} (recorded in {where}); "
            f"--port {port} would make it another address for the same data. Start it without "
            "--port, or delete its data with `fairfleet broker reset` to start a new cluster."
        )
    if protocol != record.security_protocol:
        raise BrokerError(
            f"The cluster in {state} was created with security protocol "
            f"{record.security_protocol} (recorded in {where}); this start asks for {protocol}."
        )
    if acl_admin != record.acl_admin:
        had = f"ACL admin {record.acl_admin!r}" if record.acl_admin else "no authorizer"
        asked = f"ACL admin {acl_admin!r}" if acl_admin else "no authorizer"
        raise BrokerError(
            f"The cluster in {state} was created with {had} (recorded in {where}); this "
            f"start asks for {asked}."
        )
    for role, recorded in record.ports().items():
        # Right after a kill -9 the dead broker's connections linger a few seconds (FIN_WAIT)
        # and block the bind until the clients close their side: wait for that, not longer.
        deadline = time.monotonic() + port_wait_s
        while not _port_free(recorded) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _port_free(recorded):
            raise BrokerError(
                f"Port {recorded} (the cluster's {role} listener, recorded in {where}) is in use "
                f"by another process. The broker's data in {state / 'data'} is kept; free port "
                f"{recorded} and start again (`fairfleet broker reset` would delete the data)."
            )


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

    from fairfleet.bus.kafka import KafkaLink

    quiet = KafkaLink(bootstrap).config()  # "connection refused" while it starts: DEBUG, not stderr
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(
                f"The broker process exited with code {proc.returncode} during startup."
            )
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
        except OSError:
            time.sleep(0.3)
            continue
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, **quiet, **(client_config or {})})
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
    while time.monotonic() < deadline and pid_alive(info.pid):
        time.sleep(0.2)
    if pid_alive(info.pid):
        _kill(info.pid, signal.SIGKILL)
    record.unlink(missing_ok=True)
    return True


def reset(state_dir: Path | None = None) -> bool:
    """Delete the cluster of ``state_dir``: stop its broker, remove its data and its record.

    The next ``start`` there creates a new cluster. The broker's own logs are kept. Returns
    False if there was nothing to delete.
    """
    state = (state_dir or default_state_dir()).resolve()
    stop(state)
    found = (state / "data").exists()
    if found:
        shutil.rmtree(state / "data")
    for name in ("cluster.json", "broker.json", "server.properties"):
        if (state / name).exists():
            (state / name).unlink()
            found = True
    return found


def status(state_dir: Path | None = None) -> dict[str, object]:
    """A JSON-able status: running or not, and whether the admin API answers with topics."""
    state = (state_dir or default_state_dir()).resolve()
    info = read_info(state)
    record = read_cluster(state)
    cluster = {"cluster_id": record.cluster_id} if record is not None else {}
    if info is None:
        return {
            "running": False,
            "state_dir": str(state),
            "data_kept": record is not None,
            **cluster,
        }
    from confluent_kafka.admin import AdminClient

    from fairfleet.bus.kafka import KafkaLink

    try:
        admin = AdminClient(
            {"bootstrap.servers": info.bootstrap, **KafkaLink(info.bootstrap).config()}
        )
        metadata = admin.list_topics(timeout=5)
        topics = sorted(t for t in metadata.topics if not t.startswith("__"))
        answering = True
    except Exception:
        topics, answering = [], False
    return {
        **asdict(info),
        **cluster,
        "running": True,
        "admin_api": answering,
        "topics": topics,
        "log_file": str(info.log_file),
    }
