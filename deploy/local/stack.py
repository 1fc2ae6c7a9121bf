"""Run the whole platform in the foreground: Kafka, PostgreSQL, Keycloak and the four services.

Uses the servers named by ``COMPLAINTS_KAFKA_BOOTSTRAP`` / ``COMPLAINTS_DATABASE_URL`` /
``COMPLAINTS_OIDC_ISSUER`` when set (the database part of the URL is replaced by each service's
own database), else starts the local ones.  Ctrl-C (or SIGTERM) stops the services, then
whatever infrastructure this started.
"""

from __future__ import annotations

import json
import mailbox
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from infra import DATABASES, SERVICES, InfraError, LocalInfra, port_open, service_port


def _server_url(database_url: str) -> str:
    scheme, rest = database_url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _pump(name: str, stream: object) -> None:
    width = max(len(s) for s in SERVICES)
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        sys.stdout.write(f"{name:<{width}} | {line}")
        sys.stdout.flush()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200 and json.loads(r.read()).get("status") == "ok")
    except (urllib.error.URLError, OSError):
        return False


def _ensure_databases(server_url: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(f"{server_url}/postgres")
        try:
            existing = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in existing:
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


def run() -> int:
    infra = LocalInfra.from_env()
    started: dict[str, bool] = {}
    kafka = os.environ.get("COMPLAINTS_KAFKA_BOOTSTRAP")
    database = os.environ.get("COMPLAINTS_DATABASE_URL")
    issuer = os.environ.get("COMPLAINTS_OIDC_ISSUER")
    procs: dict[str, subprocess.Popen[str]] = {}
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        busy = [f"{service_port(n)} ({n})" for n in SERVICES if port_open(int(service_port(n)))]
        if not os.environ.get("COMPLAINTS_SMTP_HOST") and port_open(int(_smtp_port())):
            busy.append(f"{_smtp_port()} (mail catcher)")
        if not os.environ.get("COMPLAINTS_WEBHOOK_URL") and port_open(int(_gateway_port())):
            busy.append(f"{_gateway_port()} (message catcher)")
        if busy:
            raise InfraError(
                f"port {', '.join(busy)} in use: is the platform running already?"
                " Stop it, or set COMPLAINTS_<SERVICE>_PORT /"
                " COMPLAINTS_LOCAL_SMTP_PORT / COMPLAINTS_LOCAL_GATEWAY_PORT"
            )
        if database:
            server = _server_url(database)
            _ensure_databases(server)
        else:
            started["postgres"] = infra.postgres.start()
            infra.postgres.ensure_databases(DATABASES)
            server = infra.postgres.url
            os.environ.setdefault("PGPASSFILE", str(infra.postgres.passfile))
        if not kafka:
            started["kafka"] = infra.kafka.start()
            kafka = infra.kafka.bootstrap
        if not issuer:
            started["keycloak"] = infra.keycloak.start()
            issuer = infra.keycloak.issuer
        delivery_env, maildir = {}, None
        if not os.environ.get("COMPLAINTS_SMTP_HOST"):
            maildir, smtp_port = _start_mail_catcher(infra, procs)
            delivery_env = {
                "COMPLAINTS_SMTP_HOST": "127.0.0.1",
                "COMPLAINTS_SMTP_PORT": smtp_port,
                "COMPLAINTS_MAIL_SPOOL": str(maildir),  # scrubbed when a customer is erased
            }
        messages = None
        if not os.environ.get("COMPLAINTS_WEBHOOK_URL"):
            messages, gateway_url = _start_message_catcher(infra, procs)
            delivery_env |= {
                "COMPLAINTS_WEBHOOK_URL": gateway_url,
                "COMPLAINTS_MESSAGE_SPOOL": str(messages),  # scrubbed when a customer is erased
            }

        for name in SERVICES:
            env: dict[str, str] = {
                **os.environ,
                "COMPLAINTS_KAFKA_BOOTSTRAP": kafka,
                "COMPLAINTS_OIDC_ISSUER": issuer,
                "COMPLAINTS_DATABASE_URL": f"{server}/complaints_{name}",
                "COMPLAINTS_KEYRING_URL": os.environ.get(
                    "COMPLAINTS_KEYRING_URL", f"{server}/complaints_keyring"
                ),
                "COMPLAINTS_PORT": service_port(name),
                "OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", name),
                "PYTHONUNBUFFERED": "1",
                **delivery_env,
            }
            if name == "intake":  # answers subject access requests for the whole platform
                env.setdefault(
                    "COMPLAINTS_PEERS",
                    json.dumps(
                        {
                            p: f"http://127.0.0.1:{service_port(p)}"
                            for p in SERVICES
                            if p != "intake"
                        }
                    ),
                )
            if not (
                os.environ.get("COMPLAINTS_KEYRING_MASTER_KEY_FILE")
                or os.environ.get("COMPLAINTS_KEYRING_MASTER_KEY")
            ):
                env["COMPLAINTS_KEYRING_MASTER_KEY_FILE"] = str(infra.postgres.keyring_key_file)
            proc = subprocess.Popen(
                [sys.executable, "-m", f"complaints_{name}"],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs[name] = proc
            threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()

        urls = {n: f"http://127.0.0.1:{service_port(n)}" for n in SERVICES}
        deadline = time.monotonic() + 120
        waiting = set(SERVICES)
        while waiting and not stopping.is_set():
            for name in list(waiting):
                if procs[name].poll() is not None:
                    raise InfraError(f"{name} exited with {procs[name].returncode} during start")
                if _ready(f"{urls[name]}/health/ready"):
                    waiting.discard(name)
            if time.monotonic() > deadline:
                raise InfraError(f"not ready after 120s: {', '.join(sorted(waiting))}")
            time.sleep(0.2)
        if not stopping.is_set():
            policy = os.environ.get("COMPLAINTS_POLICY", "built-in default policy")
            print("\nThe complaint platform is running (Ctrl-C stops everything):")
            for name in SERVICES:
                print(f"  {name:<10} {urls[name]}   (API docs: {urls[name]}/docs)")
            print(f"  Kafka      {kafka}")
            print(f"  PostgreSQL {server}  (databases complaints_<service>)")
            print(f"  identity   {issuer}  (a token: ./dev token agent)")
            print(f"  policy     {policy}")
            if maildir:
                print(
                    f"  mail       {maildir}  (Maildir: every message customers would"
                    " receive; e.g. ls new/)"
                )
            if messages:
                print(
                    f"  messages   {messages}  (every phone, letter, chat, social and web"
                    " message, as <delivery id>.json)"
                )
            print(flush=True)
        while not stopping.is_set():
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise InfraError(f"{name} exited with {proc.returncode}")
            stopping.wait(0.5)
        return 0
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", flush=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        infra.down(started)
        print("stopped.", flush=True)


def _start_mail_catcher(
    infra: LocalInfra, procs: dict[str, subprocess.Popen[str]]
) -> tuple[Path, str]:
    """A local SMTP server that keeps every message, as sent, in a Maildir under the local
    data dir (``mail_catcher.py``)."""
    port = _smtp_port()
    maildir = infra.kafka.home.parent / "mail"
    mailbox.Maildir(maildir, create=True)  # tmp/, new/, cur/: there before the first message
    catcher = str(Path(__file__).with_name("mail_catcher.py"))
    _start_helper("mail", [catcher, "--port", port, "--maildir", str(maildir)], procs)
    return maildir, port


def _start_message_catcher(
    infra: LocalInfra, procs: dict[str, subprocess.Popen[str]]
) -> tuple[Path, str]:
    """A local message gateway that keeps every message of the other channels as a file under
    the local data dir (``message_catcher.py``)."""
    port = _gateway_port()
    spool = infra.kafka.home.parent / "messages"
    catcher = str(Path(__file__).with_name("message_catcher.py"))
    _start_helper("messages", [catcher, "--port", port, "--spool", str(spool)], procs)
    return spool, f"http://127.0.0.1:{port}/messages"


def _start_helper(name: str, args: list[str], procs: dict[str, subprocess.Popen[str]]) -> None:
    """A Python helper process beside the services (``python ARGS``), its output shown under
    ``name``, stopped with them."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs[name] = proc
    threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()


def _gateway_port() -> str:
    return os.environ.get("COMPLAINTS_LOCAL_GATEWAY_PORT", "8026")


def _smtp_port() -> str:
    return os.environ.get("COMPLAINTS_LOCAL_SMTP_PORT", "8025")


if __name__ == "__main__":
    sys.exit(run())
