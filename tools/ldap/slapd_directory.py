"""Run a throw-away OpenLDAP directory with calibration groups, for tests and demos.

The directory lives in one folder: a generated ``slapd.conf``, an MDB database, a private CA with a
server certificate for StartTLS, and ``passwords.json`` (mode 0600) with the generated passwords.
Debian's ``slapd`` serves it on ``ldap://127.0.0.1:<port>`` only, in the foreground, and is stopped by
its process id. Entries are written online with ``ldapadd``/``ldapmodify`` from ``ldap-utils``, so the
``memberof`` overlay fills in each person's ``memberOf`` attribute as it would on a laboratory server.

Layout under the base DN ``dc=b2cal,dc=test``:

* ``ou=people``: one ``inetOrgPerson`` per user, with ``uid``, ``userPassword`` and, where set, the
  ``b2calJiraUsername`` attribute of the small schema written next to the configuration;
* ``ou=groups``: ``groupOfNames`` entries ``calibration-managers``, ``calibration-experts`` and
  ``calibration-viewers``;
* ``ou=services``: the account ``cn=airflow`` that Airflow binds as to search for users (read-only).

Command line::

    python tools/ldap/slapd_directory.py start FOLDER   # prints the URL and the bind DN
    python tools/ldap/slapd_directory.py stop FOLDER

Only the standard library is needed, plus ``cryptography`` for the StartTLS certificate.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BASE_DN = "dc=b2cal,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
SERVICES_DN = f"ou=services,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
SERVICE_DN = f"cn=airflow,{SERVICES_DN}"
MANAGERS_GROUP = "calibration-managers"
EXPERTS_GROUP = "calibration-experts"
VIEWERS_GROUP = "calibration-viewers"
GROUPS = (MANAGERS_GROUP, EXPERTS_GROUP, VIEWERS_GROUP)
JIRA_USERNAME_ATTRIBUTE = "b2calJiraUsername"

SLAPD_CANDIDATES = ("/usr/sbin/slapd", "slapd")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

# The OIDs sit under OpenLDAP's experimental arc (1.3.6.1.4.1.4203.666), which exists for schemas
# like this one that never leave a test machine. A laboratory directory uses its own attribute.
TEST_SCHEMA = f"""\
attributetype ( 1.3.6.1.4.1.4203.666.11.921.1 NAME '{JIRA_USERNAME_ATTRIBUTE}'
    DESC 'Jira username of the person where it differs from the login'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.4203.666.11.921.2 NAME 'b2calPerson' SUP top AUXILIARY
    MAY {JIRA_USERNAME_ATTRIBUTE} )
"""


@dataclass(frozen=True)
class DirectoryUser:
    """A person in the test directory and the groups they belong to."""

    uid: str
    groups: tuple[str, ...] = ()
    jira_username: str | None = None
    given_name: str = ""
    surname: str = ""

    @property
    def mail(self) -> str:
        """The person's e-mail address."""
        return f"{self.uid}@b2cal.test"


DEFAULT_USERS = (
    DirectoryUser("mona", (MANAGERS_GROUP,), given_name="Mona", surname="Manager"),
    DirectoryUser("erik", (EXPERTS_GROUP,), jira_username="erik.jira", given_name="Erik", surname="Expert"),
    DirectoryUser("vera", (VIEWERS_GROUP,), given_name="Vera", surname="Viewer"),
    DirectoryUser("otto", (), given_name="Otto", surname="Outsider"),
)


def find_slapd() -> str | None:
    """Return the path of Debian's slapd, or None when it is not installed."""
    for candidate in SLAPD_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def missing_tools() -> list[str]:
    """Return what this module needs and the machine lacks (``make system-packages`` installs it)."""
    missing = []
    if find_slapd() is None:
        missing.append("slapd")
    for tool in ("ldapadd", "ldapmodify", "ldapsearch"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (ldap-utils)")
    if not (SCHEMA_DIR / "inetorgperson.schema").exists():
        missing.append(f"{SCHEMA_DIR}/inetorgperson.schema (slapd)")
    if not any(MODULE_DIR.glob("memberof.*")):
        missing.append(f"{MODULE_DIR}/memberof overlay (slapd)")
    return missing


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssha(password: str) -> str:
    """Hash a password in OpenLDAP's salted SHA-1 ``{SSHA}`` scheme."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def group_dn(group: str) -> str:
    """Return the DN of a group of the test directory."""
    return f"cn={group},{GROUPS_DN}"


def user_dn(uid: str) -> str:
    """Return the DN of a person of the test directory."""
    return f"uid={uid},{PEOPLE_DN}"


def write_private(path: Path, text: str) -> None:
    """Write a file that only the owner may read."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


@dataclass
class SlapdDirectory:
    """A slapd process serving a generated directory from ``root`` on 127.0.0.1."""

    root: Path
    users: Sequence[DirectoryUser] = DEFAULT_USERS
    port: int = 0
    tls: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    passwords: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def url(self) -> str:
        """The ``ldap://`` URL that slapd listens on."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ca_cert_file(self) -> Path:
        """The CA certificate that signed the server certificate, for StartTLS clients."""
        return self.root / "tls" / "ca.pem"

    @property
    def bind_password(self) -> str:
        """The password of the read-only service account that Airflow binds as."""
        return self.passwords["airflow"]

    def password(self, uid: str) -> str:
        """Return the generated password of ``uid``."""
        return self.passwords[uid]

    def setup(self) -> None:
        """Generate the configuration, the certificates and the passwords; reuse existing passwords."""
        missing = missing_tools()
        if missing:
            raise RuntimeError(
                f"cannot build the test directory, missing: {', '.join(missing)}; run `make system-packages`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.passwords = self._load_or_make_passwords()
        if self.tls:
            self._write_certificates()
        (self.root / "b2cal.schema").write_text(TEST_SCHEMA)
        write_private(self.root / "slapd.conf", self._slapd_conf())
        write_private(self.root / "admin.pw", self.passwords["admin"])

    def start(self, timeout: float = 20.0) -> None:
        """Start slapd, wait until it accepts connections, and create the entries on the first start."""
        if not self.passwords:
            self.setup()
        seeded = (self.root / "seeded").exists()
        log_handle = (self.root / "slapd.log").open("ab")
        argv = [find_slapd() or "slapd", "-f", str(self.root / "slapd.conf"), "-h", f"{self.url}/", "-d", "0"]
        self.process = subprocess.Popen(
            argv, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        log_handle.close()
        log.info("Started slapd (pid %s) on %s", self.process.pid, self.url)
        self._wait_until_ready(timeout)
        if not seeded:
            self._seed()
            (self.root / "seeded").touch()

    def stop(self) -> None:
        """Stop slapd by its process id and wait for it to exit."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.resume()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.info("Stopped slapd (pid %s)", process.pid)
        self.process = None

    def pause(self) -> None:
        """Freeze slapd with SIGSTOP: the kernel accepts connections, but slapd never responds."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused slapd continue."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def add_member(self, group: str, uid: str) -> None:
        """Add a person to a group."""
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\nadd: member\nmember: {user_dn(uid)}\n")

    def remove_member(self, group: str, uid: str) -> None:
        """Remove a person from a group; a ``groupOfNames`` must keep at least one member."""
        self.modify(f"dn: {group_dn(group)}\nchangetype: modify\ndelete: member\nmember: {user_dn(uid)}\n")

    def move_member(self, uid: str, source: str, target: str) -> None:
        """Move a person from one group to another."""
        self.add_member(target, uid)
        self.remove_member(source, uid)

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change as the directory administrator."""
        self._ldap_tool("ldapmodify", ldif)

    def member_of(self, uid: str) -> list[str]:
        """Return the ``memberOf`` values the overlay keeps on a person."""
        output = self._ldap_tool(
            "ldapsearch", None, ["-LLL", "-b", user_dn(uid), "-s", "base", "(objectClass=*)", "memberOf"]
        )
        return [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("memberOf: ")]

    def _ldap_tool(self, tool: str, ldif: str | None, extra: Iterable[str] = ()) -> str:
        argv = [tool, "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(self.root / "admin.pw"), *extra]
        result = subprocess.run(argv, input=ldif, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} against {self.url} failed with exit status {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def _load_or_make_passwords(self) -> dict[str, str]:
        path = self.root / "passwords.json"
        names = ["admin", "airflow", *(user.uid for user in self.users)]
        passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for name in names:
            passwords.setdefault(name, secrets.token_urlsafe(16))
        write_private(path, json.dumps(passwords, indent=2))
        return passwords

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.root / "slapd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"slapd exited with status {self.process.returncode}:\n{tail}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"slapd did not listen on {self.url} within {timeout} s; see {self.root / 'slapd.log'}"
        )

    def _slapd_conf(self) -> str:
        tls = ""
        if self.tls:
            folder = self.root / "tls"
            tls = (
                f"TLSCACertificateFile {folder / 'ca.pem'}\n"
                f"TLSCertificateFile {folder / 'server.pem'}\n"
                f"TLSCertificateKeyFile {folder / 'server.key'}\n"
            )
        return f"""\
# Generated by tools/ldap/slapd_directory.py for a throw-away test directory.
include {SCHEMA_DIR / "core.schema"}
include {SCHEMA_DIR / "cosine.schema"}
include {SCHEMA_DIR / "inetorgperson.schema"}
include {self.root / "b2cal.schema"}
pidfile {self.root / "slapd.pid"}
argsfile {self.root / "slapd.args"}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
{tls}
database mdb
maxsize 67108864
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(self.passwords["admin"])}
directory {self.root / "data"}
index objectClass eq
index uid eq
index member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by dn.exact="{SERVICE_DN}" read
    by users read
    by * none
"""

    def _seed_ldif(self) -> str:
        entries = [
            f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: b2cal\no: b2cal test\n",
            f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups\n",
            f"dn: {SERVICES_DN}\nobjectClass: organizationalUnit\nou: services\n",
            (
                f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
                f"cn: airflow\nuserPassword: {ssha(self.passwords['airflow'])}\n"
            ),
        ]
        for user in self.users:
            lines = [
                f"dn: {user_dn(user.uid)}",
                "objectClass: inetOrgPerson",
                "objectClass: b2calPerson",
                f"uid: {user.uid}",
                f"cn: {user.given_name or user.uid} {user.surname or user.uid}",
                f"givenName: {user.given_name or user.uid}",
                f"sn: {user.surname or user.uid}",
                f"mail: {user.mail}",
                f"userPassword: {ssha(self.passwords[user.uid])}",
            ]
            if user.jira_username:
                lines.append(f"{JIRA_USERNAME_ATTRIBUTE}: {user.jira_username}")
            entries.append("\n".join(lines) + "\n")
        for group in GROUPS:
            members = [user_dn(user.uid) for user in self.users if group in user.groups]
            if not members:
                raise ValueError(
                    f"group {group!r} has no member; give at least one user in `users` that group"
                )
            member_lines = "".join(f"member: {dn}\n" for dn in members)
            entries.append(f"dn: {group_dn(group)}\nobjectClass: groupOfNames\ncn: {group}\n{member_lines}")
        return "\n".join(entries)

    def _seed(self) -> None:
        self._ldap_tool("ldapadd", self._seed_ldif())

    def _write_certificates(self) -> None:
        folder = self.root / "tls"
        if (folder / "server.pem").exists():
            return
        folder.mkdir(exist_ok=True)
        ca_key, ca_cert, server_key, server_cert = make_certificates()
        (folder / "ca.pem").write_bytes(ca_cert)
        (folder / "server.pem").write_bytes(server_cert)
        (folder / "server.key").touch(mode=0o600)
        (folder / "server.key").write_bytes(server_key)
        (folder / "ca.key").touch(mode=0o600)
        (folder / "ca.key").write_bytes(ca_key)


def make_certificates() -> tuple[bytes, bytes, bytes, bytes]:
    """Create a CA and a server certificate for 127.0.0.1; return PEM key and cert of each."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b2cal test directory CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    return (
        key_pem(ca_key),
        ca_cert.public_bytes(serialization.Encoding.PEM),
        key_pem(server_key),
        server_cert.public_bytes(serialization.Encoding.PEM),
    )


def main(argv: list[str] | None = None) -> int:
    """Start or stop a test directory in a folder from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("folder", type=Path, help="folder of the directory's configuration and data")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pid_file = args.folder / "slapd.pid"
    if args.action == "stop":
        if not pid_file.exists():
            print(f"no slapd.pid in {args.folder}; nothing to stop", file=sys.stderr)
            return 1
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        print(f"sent SIGTERM to slapd (pid {pid})")
        return 0
    directory = SlapdDirectory(args.folder.resolve(), port=args.port)
    directory.start()
    directory.process = None  # leave it running after this script exits
    print(f"url: {directory.url}")
    print(f"bind DN: {SERVICE_DN}")
    print(f"CA certificate: {directory.ca_cert_file}")
    print(f"passwords: {args.folder / 'passwords.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
