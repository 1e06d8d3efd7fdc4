"""A loopback OpenSSH server that replaces a calibration site's login node in tests and the demo.

:class:`LoopbackSSHD` runs ``/usr/sbin/sshd -D`` on 127.0.0.1 with a configuration, a host key and a
user key generated in its own folder, as the current user. Only that user may log in, with the
generated key. As root, ``sshd`` needs its privilege separation folder ``/run/sshd``, which this
module creates when it is missing, and the configuration allows root to log in with a key only.

Debian's ``openssh-server`` package provides ``sshd``; ``make test`` installs it.
"""

from __future__ import annotations

import getpass
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")


def sshd_available() -> bool:
    """Return whether the OpenSSH server binary is installed."""
    return SSHD.is_file() and os.access(SSHD, os.X_OK)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LoopbackSSHD:
    """An ``sshd`` on 127.0.0.1 with generated keys, started and stopped by its owner.

    :param folder: where the keys, the configuration and the log go; created if missing.
    :param port: the port; a free one when ``None``.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key_file = folder / "host_ed25519"
        self.user_key_file = folder / "user_ed25519"
        self.config_file = folder / "sshd_config"
        self.log_file = folder / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host_public_key(self) -> str:
        """The server's public host key as ``<type> <base64>``."""
        return " ".join(self.host_key_file.with_suffix(".pub").read_text().split()[:2])

    @property
    def user_private_key(self) -> str:
        """The login's private key in OpenSSH format."""
        return self.user_key_file.read_text()

    def known_hosts_line(self) -> str:
        """Return the ``known_hosts`` line of this server."""
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def prepare(self) -> None:
        """Generate the keys (once) and write the configuration."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for key_file in (self.host_key_file, self.user_key_file):
            if not key_file.exists():
                subprocess.run(
                    [
                        SSH_KEYGEN,
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "b2cal-loopback",
                        "-f",
                        str(key_file),
                    ],
                    check=True,
                )
        authorized_keys = self.folder / "authorized_keys"
        authorized_keys.write_text(self.user_key_file.with_suffix(".pub").read_text())
        authorized_keys.chmod(0o600)
        self.config_file.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key_file}",
                    f"PidFile {self.folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    f"AllowUsers {self.user}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "StrictModes no",
                    "UsePAM no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start ``sshd`` and wait until it accepts connections.

        :raises RuntimeError: if it exits or does not listen within ``timeout`` seconds, with its log.
        """
        if not sshd_available():
            raise RuntimeError(f"{SSHD} is missing: install Debian's openssh-server (make system-packages)")
        self.prepare()
        if os.geteuid() == 0 and not PRIVILEGE_SEPARATION_DIR.is_dir():
            PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, parents=True)
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config_file), "-E", str(self.log_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(
                    f"sshd exited with status {self.process.returncode}: {error}{self.log_tail()}"
                )
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    log.info("Started sshd on 127.0.0.1:%s (pid %s)", self.port, self.process.pid)
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"sshd did not listen on 127.0.0.1:{self.port} within {timeout} s: {self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the listening ``sshd`` and the per-connection ``sshd`` processes it started, by their ids.

        Stopping the children too drops every open connection, as a restart of the site's server does.
        Jobs started over a connection run in their own sessions and keep running.
        """
        if self.process is None:
            return
        children = _child_pids(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        log.info("Stopped sshd on 127.0.0.1:%s", self.port)
        self.process = None

    def restart(self, pause: float = 0.0) -> None:
        """Stop ``sshd``, wait ``pause`` seconds, and start it again on the same port with the same keys."""
        self.stop()
        time.sleep(pause)
        self.start()

    def accepted_logins(self) -> int:
        """Return how many logins the server accepted, from its log."""
        try:
            return self.log_file.read_text(errors="replace").count("Accepted publickey")
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def connection_extra(self, *, host_key: str | None = None) -> dict[str, str]:
        """Return the SSH extras of a site connection to this server: the private key and the host key."""
        return {"private_key": self.user_private_key, "host_key": host_key or self.host_public_key}

    def connection_fields(self) -> dict[str, object]:
        """Return the host, port and login of a site connection to this server."""
        return {"host": "127.0.0.1", "port": self.port, "login": self.user}


def _child_pids(pid: int) -> list[int]:
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(text) for text in children_file.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []
