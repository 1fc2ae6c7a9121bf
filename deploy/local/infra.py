"""Local infrastructure without Docker: an Apache Kafka broker, a PostgreSQL server and a
Keycloak identity provider.

Kafka's jars are assembled from Maven Central (``kafka/pom.xml``) and run with the installed
Java; PostgreSQL comes from the machine's packages and runs as the ``postgres`` user when this
runs as root; Keycloak is the ``keycloak-quarkus-dist`` zip from Maven Central, run in dev mode
on 127.0.0.1 with the realm of ``deploy/keycloak``.  Everything lives under ``.local/`` (or
``COMPLAINTS_LOCAL_DIR``); a second start reuses what the first fetched and formatted.  Start
is idempotent, readiness is awaited.

    python deploy/local/infra.py up|down|status|env|token <user>
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KAFKA_VERSION = "4.4.0"
KEYCLOAK_VERSION = "26.4.5"
REALM = "complaints"
SERVICES = ("intake", "resolution", "followup", "learning")
PORTS = {"intake": 8001, "resolution": 8002, "followup": 8003, "learning": 8004}
OFFSETS_PARTITIONS = 10  # of the broker's group-offsets topic


def service_port(name: str) -> str:
    """A service's local HTTP port (``COMPLAINTS_<NAME>_PORT`` overrides the default)."""
    return os.environ.get(f"COMPLAINTS_{name.upper()}_PORT", str(PORTS[name]))


DATABASES = [*(f"complaints_{s}" for s in SERVICES), "complaints_keyring"]
"""One database per service, and the keyring of the customers' data keys."""


class InfraError(RuntimeError):
    """Infrastructure that cannot start; the message says why in one line."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InfraError(f"{name}={raw!r} is not a port number") from None


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` of an ASCII text (each character one UTF-16 unit)."""
    h = 0
    for c in text:
        h = (31 * h + ord(c)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _group_on_each_offsets_partition() -> list[str]:
    """A group name for every partition of the group-offsets topic (the broker places a group
    by its name's Java hash)."""
    named: dict[int, str] = {}
    n = 0
    while len(named) < OFFSETS_PARTITIONS:
        group = f"complaints-infra-ready-{n}"
        h = _java_string_hash(group)
        named.setdefault((0 if h == -(1 << 31) else abs(h)) % OFFSETS_PARTITIONS, group)
        n += 1
    return list(named.values())


async def _group_coordinators_ready(bootstrap: str, deadline: float) -> None:
    """Until every partition of a fresh broker's group-offsets topic has a coordinator that
    has loaded it (the first request creates the topic).  Services that join their groups
    before would each log errors (``GroupCoordinatorNotAvailable``, "Marking the coordinator
    dead") until it is ready."""
    from aiokafka.client import AIOKafkaClient, CoordinationType
    from aiokafka.errors import KafkaError, for_code
    from aiokafka.protocol.commit import OffsetFetchRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        for group in _group_on_each_offsets_partition():
            while True:
                try:
                    node = await client.coordinator_lookup(CoordinationType.GROUP, group)
                    answer = await client.send(node, OffsetFetchRequest(group, None))
                    error = for_code(answer.error_code)
                    if error.errno == 0:
                        break
                except KafkaError as exc:
                    error = type(exc)
                if time.monotonic() > deadline:
                    raise InfraError(f"Kafka's group coordinators are not ready: {error.__name__}")
                await asyncio.sleep(0.2)
    finally:
        await client.close()


def kafka_cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64, drawn again while it starts with
    ``-`` (as Kafka's own ``Uuid.randomUuid`` does), which the storage tool would read as an
    option (one id in 64)."""
    while (cluster_id := base64.urlsafe_b64encode(draw().bytes).decode()[:22]).startswith("-"):
        pass
    return cluster_id


# The local broker lives as long as a run, a test session or a bench: it compiles with the JVM's
# quick compiler only (C1).  A young broker spends far less CPU compiling so than with C2 as
# well; a long-lived one, some more running C1's code (docs/capacity.md, "A broker just started
# costs more").  ``Kafka.jvm_options`` (COMPLAINTS_LOCAL_KAFKA_JVM_OPTS) come after these.
KAFKA_JIT = ("-XX:TieredStopAtLevel=1",)


@dataclass
class Kafka:
    home: Path
    port: int
    controller_port: int
    jvm_options: tuple[str, ...] = ()  # after the broker's own: the last of a repeated one wins

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def fetch(self) -> None:
        """Copy the broker's runtime classpath from Maven Central (once)."""
        marker = self.lib / f".complete-{KAFKA_VERSION}"
        if marker.exists():
            return
        if shutil.which("mvn") is None:
            raise InfraError("mvn not found: install Maven (it fetches Kafka's jars)")
        print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central ...", flush=True)
        if self.lib.exists():
            shutil.rmtree(self.lib)
        self.lib.mkdir(parents=True)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(HERE / "kafka" / "pom.xml"),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={self.lib}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise InfraError(
                "fetching Kafka jars failed: " + (result.stdout + result.stderr).strip()[-800:]
            )
        marker.touch()

    def _write_config(self) -> Path:
        data = self.home / "data"
        config = self.home / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    f"offsets.topic.num.partitions={OFFSETS_PARTITIONS}",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            result = subprocess.run(
                [
                    "java",
                    "-cp",
                    f"{self.lib}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--ignore-formatted",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise InfraError(
                    "formatting Kafka storage failed: "
                    + (result.stdout + result.stderr).strip()[-800:]
                )
        return config

    def start(self, timeout: float = 120.0) -> bool:
        """Start the broker unless it runs; wait until it serves. True if this call started it."""
        if self.running():
            return False
        if shutil.which("java") is None:
            raise InfraError("java not found: install a Java 17+ runtime to run Kafka")
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise InfraError(
                    f"port {port} is in use by another process; stop it or set "
                    "COMPLAINTS_LOCAL_KAFKA_PORT / _CONTROLLER_PORT"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.fetch()
        config = self._write_config()
        log = self.log_file.open("w")
        proc = subprocess.Popen(
            [
                "java",
                "-Xms256m",
                "-Xmx512m",
                "-XX:+UseG1GC",
                *KAFKA_JIT,
                *self.jvm_options,
                "-Djava.awt.headless=true",
                "-cp",
                f"{self.lib}/*",
                "kafka.Kafka",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(f"Kafka exited with {proc.returncode}:\n{_tail(self.log_file)}")
            if "Kafka Server started" in self.log_file.read_text(errors="replace") and port_open(
                self.port
            ):
                try:
                    asyncio.run(_group_coordinators_ready(self.bootstrap, deadline))
                except InfraError:
                    self.stop()
                    raise
                return True
            time.sleep(0.2)
        self.stop()
        raise InfraError(f"Kafka did not start within {timeout:.0f}s:\n{_tail(self.log_file)}")

    def stop(self, timeout: float = 30.0) -> bool:
        return _stop_process(self.pid_file, self.pid(), timeout)

    def kill(self) -> bool:
        """SIGKILL the broker (a crash, for the fault suite); ``start`` recovers its logs."""
        return _stop_process(self.pid_file, self.pid(), 10, first=signal.SIGKILL)


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _stop_process(
    pid_file: Path, pid: int | None, timeout: float, first: int = signal.SIGTERM
) -> bool:
    """Send ``first`` (SIGTERM) to the process group, SIGKILL after ``timeout``; False if
    nothing ran."""
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, first)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


@dataclass
class Keycloak:
    """A local Keycloak in dev mode, with the platform's realm imported at every start."""

    home: Path
    port: int
    management_port: int

    @property
    def dist(self) -> Path:
        return self.home / f"keycloak-{KEYCLOAK_VERSION}"

    @property
    def pid_file(self) -> Path:
        return self.home / "keycloak.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/{REALM}"

    def pid(self) -> int | None:
        return _read_pid(self.pid_file)

    def running(self) -> bool:
        return self.pid() is not None and self._realm_served()

    def _realm_served(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.issuer}/.well-known/openid-configuration", timeout=2
            ) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def fetch(self) -> None:
        """The distribution zip from Maven Central, unpacked once."""
        marker = self.dist / ".complete"
        if marker.exists():
            return
        if shutil.which("mvn") is None:
            raise InfraError("mvn not found: install Maven (it fetches Keycloak)")
        print(f"fetching Keycloak {KEYCLOAK_VERSION} from Maven Central ...", flush=True)
        self.home.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "dependency:copy",
                f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip",
                f"-DoutputDirectory={self.home}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        archive = self.home / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        if result.returncode != 0 or not archive.exists():
            raise InfraError(
                "fetching Keycloak failed: " + (result.stdout + result.stderr).strip()[-800:]
            )
        if self.dist.exists():
            shutil.rmtree(self.dist)
        with zipfile.ZipFile(archive) as z:
            z.extractall(self.home)
        for script in (self.dist / "bin").glob("*.sh"):
            script.chmod(0o755)
        archive.unlink()
        marker.touch()

    def secrets(self) -> dict[str, str]:
        """Per-machine secrets: the service accounts' client secrets and the bootstrap admin."""
        if self.secrets_file.exists():
            known: dict[str, str] = json.loads(self.secrets_file.read_text())
            return known
        self.home.mkdir(parents=True, exist_ok=True)
        made = {
            "CHANNEL_GATEWAY_SECRET": secrets.token_urlsafe(24),
            "INTEGRATOR_SECRET": secrets.token_urlsafe(24),
            "ADMIN_PASSWORD": secrets.token_urlsafe(18),
        }
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(made, f)
        return made

    def _write_realm(self) -> None:
        text = (ROOT / "deploy" / "keycloak" / "complaints-realm.json").read_text()
        for name, value in self.secrets().items():
            text = text.replace("${" + name + "}", value)
        target = self.dist / "data" / "import"
        target.mkdir(parents=True, exist_ok=True)
        path = target / "complaints-realm.json"
        path.write_text(text)
        path.chmod(0o600)
        # the realm is configuration: a fresh dev database imports it anew at every start
        shutil.rmtree(self.dist / "data" / "h2", ignore_errors=True)

    def start(self, timeout: float = 180.0) -> bool:
        """Start Keycloak unless it runs; wait until the realm is served. True if started."""
        if self.running():
            return False
        if shutil.which("java") is None:
            raise InfraError("java not found: install a Java 17+ runtime to run Keycloak")
        for port in (self.port, self.management_port):
            if port_open(port):
                raise InfraError(
                    f"port {port} is in use by another process; stop it or set "
                    "COMPLAINTS_LOCAL_KEYCLOAK_PORT / _MANAGEMENT_PORT"
                )
        self.fetch()
        self._write_realm()
        env = {
            **os.environ,
            "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self.secrets()["ADMIN_PASSWORD"],
            "JAVA_OPTS_KC_HEAP": "-Xms128m -Xmx768m",
        }
        log = self.log_file.open("w")
        proc = subprocess.Popen(
            [
                str(self.dist / "bin" / "kc.sh"),
                "start-dev",
                "--import-realm",
                "--http-host=127.0.0.1",
                f"--http-port={self.port}",
                f"--hostname=http://127.0.0.1:{self.port}",
                f"--http-management-port={self.management_port}",
                "--health-enabled=true",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(f"Keycloak exited with {proc.returncode}:\n{_tail(self.log_file)}")
            if self._realm_served():
                return True
            time.sleep(0.5)
        self.stop()
        raise InfraError(f"Keycloak did not start within {timeout:.0f}s:\n{_tail(self.log_file)}")

    def stop(self, timeout: float = 30.0) -> bool:
        return _stop_process(self.pid_file, self.pid(), timeout)

    def token(self, user: str) -> str:
        """An access token: a demo user's (password grant) or a service account's."""
        if user in ("channel-gateway", "integrator"):
            secret = self.secrets()[
                "CHANNEL_GATEWAY_SECRET" if user == "channel-gateway" else "INTEGRATOR_SECRET"
            ]
            form = {"grant_type": "client_credentials", "client_id": user, "client_secret": secret}
        else:
            password = f"{user.rstrip('0123456789')}-local-only"
            form = {
                "grant_type": "password",
                "client_id": "complaints-cli",
                "username": user,
                "password": password,
            }
        request = urllib.request.Request(
            f"{self.issuer}/protocol/openid-connect/token",
            data=urllib.parse.urlencode(form).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                token: str = json.loads(r.read())["access_token"]
                return token
        except urllib.error.HTTPError as exc:
            raise InfraError(f"no token for {user!r}: {exc.code} {exc.read()[:200]!r}") from None


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).parent
    raise InfraError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql-15)"
    )


HBA = """# written by deploy/local/infra.py: TCP needs the password (SCRAM); the socket lives in
# the data directory, which only the server's owner can enter
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


@dataclass
class Postgres:
    home: Path
    port: int
    secrets: Path  # a folder only the developer can read

    @property
    def url(self) -> str:
        """The server, without the password (clients read it from :attr:`passfile`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def passfile(self) -> Path:
        """A pgpass file with the ``postgres`` role's password (``PGPASSFILE``)."""
        return self.secrets / "postgres.pgpass"

    def password(self) -> str:
        """The password, made once per machine and kept in :attr:`passfile` (mode 0600)."""
        if self.passfile.exists():
            return self.passfile.read_text().strip().rsplit(":", 1)[1]
        self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        made = secrets.token_urlsafe(24)
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"127.0.0.1:{self.port}:*:postgres:{made}\n")
        return made

    @property
    def keyring_key_file(self) -> Path:
        """The keyring's master key (base64 of 32 random bytes), made once per machine."""
        path = self.secrets / "keyring.key"
        if not path.exists():
            self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(key + "\n")
        return path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return cmd

    def _run(
        self, cmd: list[str], what: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._as_owner(cmd), capture_output=True, text=True, check=False, cwd="/", input=stdin
        )
        if result.returncode != 0:
            raise InfraError(f"{what} failed: " + (result.stdout + result.stderr).strip()[-800:])
        return result

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        result = subprocess.run(
            self._as_owner([str(_pg_bindir() / "pg_ctl"), "status", "-D", str(self.data)]),
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        return result.returncode == 0

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
            probe = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-w", str(self.home)], check=False
            )
            if probe.returncode != 0:
                raise InfraError(f"the postgres user cannot write {self.home}")

    def start(self, timeout: int = 60) -> bool:
        """Start the server unless it runs (initdb on first use). True if this call started it."""
        bindir = _pg_bindir()
        if self.running():
            return False
        if port_open(self.port):
            raise InfraError(
                f"port {self.port} is in use by another process; stop it or set "
                "COMPLAINTS_LOCAL_POSTGRES_PORT"
            )
        self._prepare_home()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
                "initdb",
            )
        self._write_hba()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} "
            "-c max_connections=300 -c shared_buffers=128MB"
            " -c password_encryption=scram-sha-256"
        )
        self._run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(timeout),
                "-o",
                options,
            ],
            f"starting PostgreSQL (log: {self.log_file})",
        )
        self._set_password()
        return True

    def _write_hba(self) -> None:
        hba = self.data / "pg_hba.conf"
        if hba.read_text() != HBA:  # also moves a data directory of older versions off trust
            self._run(["sh", "-c", f"cat > {hba}"], "writing pg_hba.conf", stdin=HBA)

    def _psql_socket(self) -> list[str]:
        return [
            str(_pg_bindir() / "psql"),
            "-h",
            str(self.data),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAq",
            "-v",
            "ON_ERROR_STOP=1",
        ]

    def _set_password(self) -> None:
        self._run(
            [*self._psql_socket(), "-f", "-"],
            "setting the postgres password",
            stdin=f"ALTER ROLE postgres PASSWORD '{self.password()}';\n",
        )

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; ``mode="immediate"`` aborts it as a crash would (recovery at the
        next start)."""
        if not self.running():
            return False
        self._run(
            [str(_pg_bindir() / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"],
            "stopping PostgreSQL",
        )
        return True

    def ensure_databases(self, names: list[str]) -> None:
        psql = self._psql_socket()
        existing = set(
            self._run(
                [*psql, "-c", "SELECT datname FROM pg_database"], "listing databases"
            ).stdout.split()
        )
        for name in names:
            if name not in existing:
                self._run([*psql, "-c", f'CREATE DATABASE "{name}"'], f"creating {name}")


def _postgres_home(local: Path) -> Path:
    """Where the data directory goes: under ``local`` unless the postgres user cannot reach it."""
    home = local / "postgres"
    if os.geteuid() != 0:
        return home
    parent = local
    while not parent.exists():
        parent = parent.parent
    reach = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(parent)],
        check=False,
        capture_output=True,
    )
    if reach.returncode == 0:
        return home
    digest = hashlib.sha1(str(local).encode()).hexdigest()[:10]
    return Path("/var/lib/postgresql") / f"complaints-{digest}"


@dataclass
class LocalInfra:
    kafka: Kafka
    postgres: Postgres
    keycloak: Keycloak

    @classmethod
    def from_env(cls) -> LocalInfra:
        local = Path(os.environ.get("COMPLAINTS_LOCAL_DIR", ROOT / ".local")).resolve()
        local.mkdir(parents=True, exist_ok=True)
        os.chmod(local, 0o755)
        return cls(
            Kafka(
                local / "kafka",
                _env_int("COMPLAINTS_LOCAL_KAFKA_PORT", 9092),
                _env_int("COMPLAINTS_LOCAL_KAFKA_CONTROLLER_PORT", 9093),
                tuple(os.environ.get("COMPLAINTS_LOCAL_KAFKA_JVM_OPTS", "").split()),
            ),
            Postgres(
                _postgres_home(local),
                _env_int("COMPLAINTS_LOCAL_POSTGRES_PORT", 55432),
                local / "secrets",
            ),
            Keycloak(
                local / "keycloak",
                _env_int("COMPLAINTS_LOCAL_KEYCLOAK_PORT", 8090),
                _env_int("COMPLAINTS_LOCAL_KEYCLOAK_MANAGEMENT_PORT", 8091),
            ),
        )

    def up(self, databases: list[str] | None = None, *, identity: bool = True) -> dict[str, bool]:
        """Start all three (each unless it runs; Keycloak only with ``identity``); return which
        ones this call started."""
        started = {"postgres": self.postgres.start()}
        try:
            self.postgres.ensure_databases(databases or DATABASES)
            started["kafka"] = self.kafka.start()
            if identity:
                started["keycloak"] = self.keycloak.start()
        except BaseException:
            self.down(started)
            raise
        return started

    def down(self, only: dict[str, bool] | None = None) -> None:
        if only is None or only.get("keycloak"):
            self.keycloak.stop()
        if only is None or only.get("kafka"):
            self.kafka.stop()
        if only is None or only.get("postgres"):
            self.postgres.stop()

    def describe(self) -> str:
        def state(running: bool) -> str:
            return "running" if running else "stopped"

        return (
            f"Kafka      {self.kafka.bootstrap}  ({state(self.kafka.running())};"
            f" log {self.kafka.log_file})\n"
            f"PostgreSQL {self.postgres.url}  ({state(self.postgres.running())};"
            f" log {self.postgres.log_file})\n"
            f"Keycloak   {self.keycloak.issuer}  ({state(self.keycloak.running())};"
            f" log {self.keycloak.log_file})"
        )


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    try:
        infra = LocalInfra.from_env()
        if command == "up":
            infra.up()
            print(infra.describe())
        elif command == "down":
            infra.down()
            print(infra.describe())
        elif command == "status":
            print(infra.describe())
        elif command == "env":
            print(f"export COMPLAINTS_KAFKA_BOOTSTRAP={infra.kafka.bootstrap}")
            print(f"export COMPLAINTS_DATABASE_URL={infra.postgres.url}/postgres")
            print(f"export PGPASSFILE={infra.postgres.passfile}")
            print(f"export COMPLAINTS_OIDC_ISSUER={infra.keycloak.issuer}")
            print(f"export COMPLAINTS_KEYRING_URL={infra.postgres.url}/complaints_keyring")
            print(f"export COMPLAINTS_KEYRING_MASTER_KEY_FILE={infra.postgres.keyring_key_file}")
        elif command == "token":
            if len(argv) < 3:
                print(f"usage: {argv[0]} token <user or service account>", file=sys.stderr)
                return 2
            if not infra.keycloak.running():
                infra.keycloak.start()
            print(infra.keycloak.token(argv[2]))
        elif command == "redrive":
            return redrive(infra, argv[2:])
        else:
            print(f"usage: {argv[0]} up|down|status|env|token <user>", file=sys.stderr)
            return 2
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def redrive(infra: LocalInfra, args: list[str]) -> int:
    """``redrive list|replay SERVICE [EVENT_ID ...]``: the records a service's consumers parked
    on the dead-letter topic, and their replay into those consumers (as the local admin)."""
    usage = "usage: ./dev redrive list|replay intake|resolution|followup|learning [EVENT_ID ...]"
    if len(args) < 2 or args[0] not in ("list", "replay") or args[1] not in PORTS:
        print(usage, file=sys.stderr)
        return 2
    action, service, event_ids = args[0], args[1], args[2:]
    base = f"http://127.0.0.1:{service_port(service)}/admin/dead-letters"
    if not infra.keycloak.running():
        infra.keycloak.start()
    headers = {"Authorization": f"Bearer {infra.keycloak.token('admin')}"}
    if action == "list":
        request = urllib.request.Request(base, headers=headers)
    else:
        body = json.dumps({"event_ids": event_ids or None}).encode()
        headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"{base}/replay", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.loads(r.read())
    except (urllib.error.URLError, OSError) as exc:
        raise InfraError(f"{service} did not answer at {base} ({exc}); is ./dev run up?") from None
    if action == "list":
        print(f"{'status':9} {'consumer':34} {'event type':28} error")
        for i in answer["items"]:
            print(
                f"{i['status']:9} {i['consumer']:34} {i['event_type'] or '?':28}"
                f" {i['error_type']}: {i['error_message']}  ({i['event_id']})"
            )
        print(f"{len(answer['items'])} dead letters")
    else:
        print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
