"""Calibration sites: the settings of a site, read from the extras of its connection, and their checks.

A site is where the calibration jobs run: KEK (LSF), BNL (HTCondor) or DESY (HTCondor). Its settings
are the transport that reaches it (``transport``: ``local`` on the Airflow machine, or ``ssh``), the
folder of the job folders (``work_root``), the call of ``b2caf-prompt-run`` there (``backend``,
``backend_options``, ``prompt_run_options``), the set-up of basf2 for a release (``basf2_setup``) and
the folders of the input files (``storage_root``, ``cdst_root``, ``path_template``), the source of
the skim files (``file_source``: those folders, or the replicas at the site's RSE through Rucio), and
the optional validation step that runs after a calibration's payloads are checked (``validation``).

:func:`parse_site_settings` checks every value when the settings are read, so a typo in a connection
fails with the key, the value and the fix before anything runs at the site. The SSH host, login and
credentials stay in the connection itself and never enter :class:`SiteSettings`.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from b2cal.caf import BACKENDS, build_prompt_run_command
from b2cal.filesources import DirectoryLister, FileSource, PathTemplateSource, RucioFileSource

TRANSPORTS = ("local", "ssh")
DEFAULT_PATH_TEMPLATE = "{tag}/e{exp:04d}/r{run:05d}"
#: The key of ``basf2_setup`` whose command applies to every release without a command of its own.
ANY_RELEASE = "*"
RELEASE_PLACEHOLDER = "{release}"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A program name or path that is safe on any login shell's command line without quoting.
PROGRAM = re.compile(r"[A-Za-z0-9_./+-]+")
# Extras that would switch off host key checking. asyncssh and the SSH provider accept them; a
# calibration site must not.
NO_HOST_KEY_CHECK_EXTRAS = ("no_host_key_check", "ignore_hostkey_verification", "allow_host_key_change")


#: The sources of skim files a site can choose: ``path`` (the folders below ``storage_root``) or
#: ``rucio`` (the replicas of the skim datasets at the site's RSE).
FILE_SOURCES = ("path", "rucio")
DEFAULT_RUCIO_CONN_ID = "rucio_default"
# The characters of RSE names and scopes (the Rucio server may allow fewer), and a URI scheme in lower
# case (RFC 3986).
RSE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
RUCIO_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")
URI_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")

#: Seconds the validation step may take when its ``timeout`` is not given.
DEFAULT_VALIDATION_TIMEOUT = 1800.0
VALIDATION_KEYS = ("command", "options", "timeout")


class SiteConfigError(ValueError):
    """Invalid site settings; the message names the connection, the extra, the value and the fix."""


@dataclass(frozen=True)
class ValidationStep:
    """The site's validation program, run in a calibration's job folder after its payloads are checked.

    :param command: the program, e.g. ``b2val-prompt-run``.
    :param options: arguments placed between the program and the job folder and validation folder.
    :param timeout: seconds one run may take.
    """

    command: str
    options: tuple[str, ...] = ()
    timeout: float = DEFAULT_VALIDATION_TIMEOUT

    def argv(self, job_dir: str, output_dir: str) -> list[str]:
        """Return the command line that validates the job in ``job_dir`` into ``output_dir``."""
        return [self.command, *self.options, job_dir, output_dir]

    def to_dict(self) -> dict[str, Any]:
        """Return the step as the extra ``validation`` gives it."""
        return {"command": self.command, "options": list(self.options), "timeout": self.timeout}


@dataclass(frozen=True)
class SiteSettings:
    """The settings of one calibration site, checked.

    :param name: the site's name in messages and pages: the extra ``site``, or else ``site``.
    :param site: the site as requests name it, e.g. ``BNL``; its connection is ``b2cal_site_<site>``.
    :param conn_id: the Airflow connection the settings come from.
    :param transport: ``local`` or ``ssh``.
    :param work_root: the folder at the site that contains the job folders.
    :param backend: the CAF backend: Local, LSF, PBS or HTCondor.
    :param backend_options: options of the backend, e.g. ``{"queue": "l"}``.
    :param prompt_run_options: options of ``b2caf-prompt-run`` for every backend, e.g. ``{"heartbeat": 60}``.
    :param basf2_setup: shell command per release that sets up basf2; the key ``*`` applies to the others.
    :param storage_root: the folder of the raw calibration skims, on the site.
    :param cdst_root: the folder that cDST production writes, on the site.
    :param path_template: the folder of one skim and run below a root.
    :param database_chain: global tags below the staging tag, lowest priority first.
    :param env: environment variables of the jobs.
    :param poll_interval: seconds between two looks at a running job.
    :param cdst_command: the cDST production command as an argument list, or ``None`` for the stand-in.
    :param remote_python: the Python 3 interpreter that inspects jobs on an SSH site.
    :param remote_shell: the shell that runs a job's wrapper script, which sources the set-up command.
    :param max_sessions: commands run at once over the site's one SSH connection; keep it below the
        server's ``MaxSessions`` (OpenSSH default 10).
    :param command_timeout: seconds one command at the site may take.
    :param unreachable_timeout: seconds a waiting job's site may stay unreachable before the wait fails.
    :param validation: the validation step after the payload checks, or ``None`` for none.
    :param file_source: where input selection finds the skim files, ``path`` or ``rucio``.
    :param rucio_rse: the site's RSE, e.g. ``BNL-DISK``, or ``None``.
    :param rucio_conn_id: the Rucio connection of the ``rucio`` file source.
    :param rucio_scope: the scope of the skim datasets, or ``None`` for the Rucio connection's scope.
    :param rucio_scheme: the protocol of the replicas' PFNs, e.g. ``root``, or ``None`` for any.
    """

    name: str
    site: str
    conn_id: str
    transport: str
    work_root: str
    backend: str
    backend_options: dict[str, Any]
    prompt_run_options: dict[str, Any]
    storage_root: str
    cdst_root: str
    basf2_setup: dict[str, str] = field(default_factory=dict)
    path_template: str = DEFAULT_PATH_TEMPLATE
    database_chain: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    poll_interval: float = 30.0
    cdst_command: list[str] | None = None
    remote_python: str = "python3"
    remote_shell: str = "/bin/bash"
    max_sessions: int = 8
    command_timeout: float = 120.0
    unreachable_timeout: float = 3600.0
    validation: ValidationStep | None = None
    file_source: str = "path"
    rucio_rse: str | None = None
    rucio_conn_id: str = DEFAULT_RUCIO_CONN_ID
    rucio_scope: str | None = None
    rucio_scheme: str | None = None

    @property
    def is_ssh(self) -> bool:
        """Whether jobs reach the site over SSH."""
        return self.transport == "ssh"

    def setup_command(self, release: str) -> str:
        """Return the shell command that sets up basf2 ``release``, or ``""`` when the site needs none.

        ``{release}`` in the command is replaced by the quoted release name.

        :raises SiteConfigError: if the site sets up some releases but not this one.
        """
        command = self.basf2_setup.get(release, self.basf2_setup.get(ANY_RELEASE))
        if command is None:
            if not self.basf2_setup:
                return ""
            raise SiteConfigError(
                f"connection {self.conn_id!r}: basf2_setup has no command for {release!r} and no "
                f'{ANY_RELEASE!r} entry; add one, e.g. "source /cvmfs/belle.cern.ch/tools/b2setup '
                f'{RELEASE_PLACEHOLDER}"'
            )
        return command.replace(RELEASE_PLACEHOLDER, shlex.quote(release))

    def prompt_run_argv(self) -> list[str]:
        """Return the ``b2caf-prompt-run`` command line of a job at this site, run in its job folder."""
        return build_prompt_run_command(
            self.backend,
            "caf_config.json",
            "input_data.json",
            backend_options=self.backend_options,
            options=self.prompt_run_options,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain values, without the SSH credentials, which are not part of them."""
        return {
            "name": self.name,
            "site": self.site,
            "transport": self.transport,
            "work_root": self.work_root,
            "backend": self.backend,
            "backend_options": dict(self.backend_options),
            "prompt_run_options": dict(self.prompt_run_options),
            "basf2_setup": dict(self.basf2_setup),
            "storage_root": self.storage_root,
            "cdst_root": self.cdst_root,
            "path_template": self.path_template,
            "database_chain": list(self.database_chain),
            "env": dict(self.env),
            "poll_interval": self.poll_interval,
            "cdst_command": list(self.cdst_command) if self.cdst_command is not None else None,
            "remote_python": self.remote_python,
            "remote_shell": self.remote_shell,
            "max_sessions": self.max_sessions,
            "command_timeout": self.command_timeout,
            "unreachable_timeout": self.unreachable_timeout,
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "file_source": self.file_source,
            "rucio_rse": self.rucio_rse,
            "rucio_conn_id": self.rucio_conn_id,
            "rucio_scope": self.rucio_scope,
            "rucio_scheme": self.rucio_scheme,
        }


def parse_site_settings(
    site: str, extra: Mapping[str, Any], *, conn_id: str, conn_type: str | None = None
) -> SiteSettings:
    """Check the extras of a site connection and return the site's settings.

    :param site: the site's name as a request gives it.
    :param extra: the connection's extras.
    :param conn_id: the connection's id, for messages.
    :param conn_type: the connection's type; ``ssh`` makes ``ssh`` the default transport.
    :raises SiteConfigError: naming the first invalid extra.
    """
    where = f"connection {conn_id!r}"
    transport = str(extra.get("transport") or ("ssh" if conn_type == "ssh" else "local"))
    if transport not in TRANSPORTS:
        raise SiteConfigError(
            f"{where}: transport {transport!r} is invalid; use one of {', '.join(TRANSPORTS)}"
        )
    if transport == "ssh":
        check_host_key_extras(extra, conn_id)

    for key in ("work_root", "storage_root"):
        if not extra.get(key):
            raise SiteConfigError(f"{where} lacks the extra {key!r}: give the absolute folder on the site")
    work_root = check_site_path(where, "work_root", extra["work_root"])
    storage_root = check_site_path(where, "storage_root", extra["storage_root"])
    cdst_default = str(PurePosixPath(storage_root).parent / "cdst")
    cdst_root = check_site_path(where, "cdst_root", extra.get("cdst_root") or cdst_default)

    backend = str(extra.get("backend", "Local"))
    backend_options = _mapping(where, "backend_options", extra.get("backend_options"))
    prompt_run_options = _mapping(where, "prompt_run_options", extra.get("prompt_run_options"))
    try:
        # Builds a command line only to check the backend, the option names and the value types.
        build_prompt_run_command(
            backend,
            "caf_config.json",
            "input_data.json",
            backend_options=backend_options,
            options=prompt_run_options,
        )
    except ValueError as exc:
        raise SiteConfigError(f"{where}: {exc}") from None
    rucio = _rucio_settings(where, extra, backend_options)

    return SiteSettings(
        name=str(extra.get("site") or site),
        site=site,
        conn_id=conn_id,
        transport=transport,
        work_root=work_root,
        backend=backend,
        backend_options=backend_options,
        prompt_run_options=prompt_run_options,
        storage_root=storage_root,
        cdst_root=cdst_root,
        basf2_setup=_basf2_setup(where, extra.get("basf2_setup")),
        path_template=_path_template(where, extra.get("path_template", DEFAULT_PATH_TEMPLATE)),
        database_chain=_database_chain(where, extra.get("database_chain")),
        env=_env(where, extra.get("env")),
        poll_interval=_positive(where, "poll_interval", extra.get("poll_interval", 30)),
        cdst_command=_cdst_command(where, extra.get("cdst_command")),
        remote_python=_program(where, "remote_python", extra.get("remote_python", "python3")),
        remote_shell=_program(where, "remote_shell", extra.get("remote_shell", "/bin/bash")),
        max_sessions=int(_positive(where, "max_sessions", extra.get("max_sessions", 8), integer=True)),
        command_timeout=_positive(where, "command_timeout", extra.get("command_timeout", 120)),
        unreachable_timeout=_positive(where, "unreachable_timeout", extra.get("unreachable_timeout", 3600)),
        validation=parse_validation_step(where, extra.get("validation")),
        **rucio,
    )


def build_skim_source(
    site: SiteSettings,
    *,
    lister: DirectoryLister | None = None,
    rucio_client: Any = None,
    rucio_scope: str = "b2cal",
) -> FileSource:
    """Return the source of the site's skim files that the extra ``file_source`` chooses.

    :param lister: lists the folders of the ``path`` source; the local file system by default.
    :param rucio_client: a ``rucio.client.Client`` for the ``rucio`` source.
    :param rucio_scope: the scope of the skim datasets when the site sets no ``rucio_scope``.
    :raises ValueError: if the site reads through Rucio and no client is given.
    """
    if site.file_source == "path":
        return PathTemplateSource(site.storage_root, site.path_template, lister=lister)
    if rucio_client is None or site.rucio_rse is None:
        raise ValueError(
            f"connection {site.conn_id!r} reads the skims through Rucio: pass a client of "
            f"connection {site.rucio_conn_id!r}"
        )
    return RucioFileSource(
        rucio_client,
        site.rucio_scope or rucio_scope,
        site.rucio_rse,
        scheme=site.rucio_scheme,
        # b2caf-prompt-run puts --path-prefix in front of each input path, so the jobs need paths.
        paths_only=bool(site.backend_options.get("path_prefix")),
    )


def _rucio_settings(
    where: str, extra: Mapping[str, Any], backend_options: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``file_source`` and the Rucio extras, and return them as :class:`SiteSettings` arguments."""
    file_source = extra.get("file_source") or "path"
    if file_source not in FILE_SOURCES:
        raise SiteConfigError(
            f"{where}: file_source {file_source!r} is invalid; use 'path' to list the folders below "
            "storage_root or 'rucio' to list the replicas at the site's rucio_rse"
        )
    rse = _rucio_name(where, "rucio_rse", extra.get("rucio_rse"), RSE_NAME, "an RSE name such as 'BNL-DISK'")
    scope = _rucio_name(
        where, "rucio_scope", extra.get("rucio_scope"), RUCIO_SCOPE, "a scope such as 'b2cal'"
    )
    conn_id = extra.get("rucio_conn_id") or DEFAULT_RUCIO_CONN_ID
    if not isinstance(conn_id, str) or any(character.isspace() for character in conn_id):
        raise SiteConfigError(
            f"{where}: rucio_conn_id {conn_id!r} must be an Airflow connection id such as "
            f"{DEFAULT_RUCIO_CONN_ID!r}"
        )
    scheme = extra.get("rucio_scheme") or None
    if scheme is not None and (not isinstance(scheme, str) or not URI_SCHEME.fullmatch(scheme)):
        raise SiteConfigError(
            f"{where}: rucio_scheme {scheme!r} must be a protocol scheme in lower case, e.g. 'root' or 'file'"
        )

    if file_source == "rucio" and rse is None:
        raise SiteConfigError(
            f"{where}: file_source 'rucio' needs the extra rucio_rse, the RSE whose replicas the jobs "
            "read, e.g. 'BNL-DISK'; set it, or set file_source to 'path'"
        )
    if file_source == "rucio" and backend_options.get("path_prefix") and scheme is None:
        raise SiteConfigError(
            f"{where}: file_source 'rucio' with backend_options.path_prefix "
            f"{backend_options['path_prefix']!r} needs rucio_scheme: b2caf-prompt-run puts the prefix in "
            "front of each input path, so b2cal passes the paths of the replicas' PFNs of one protocol; "
            "set rucio_scheme to the protocol whose paths the prefix serves, e.g. 'root'"
        )
    return {
        "file_source": file_source,
        "rucio_rse": rse,
        "rucio_conn_id": conn_id,
        "rucio_scope": scope,
        "rucio_scheme": scheme,
    }


def _rucio_name(where: str, key: str, value: Any, pattern: re.Pattern[str], example: str) -> str | None:
    # An empty value means "not set", as the cDST registration has always read rucio_rse.
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SiteConfigError(f"{where}: {key} {value!r} is invalid; give {example}")
    return value


def check_host_key_extras(extra: Mapping[str, Any], conn_id: str) -> None:
    """Require host key checking: a ``host_key`` or a ``known_hosts`` file, and no extra that skips it.

    :raises SiteConfigError: if the connection would accept any host key.
    """
    for key in NO_HOST_KEY_CHECK_EXTRAS:
        if str(extra.get(key, "false")).strip().lower() in ("true", "1", "yes"):
            raise SiteConfigError(
                f"connection {conn_id!r} sets {key}={extra[key]!r}, which turns host key checking off; "
                "calibration sites always check the host key: remove the extra and give host_key or "
                "known_hosts"
            )
    host_key = extra.get("host_key")
    known_hosts = extra.get("known_hosts")
    if not host_key and not known_hosts:
        raise SiteConfigError(
            f"connection {conn_id!r} has neither the extra host_key nor known_hosts: give the site's public "
            "host key (e.g. the output of 'ssh-keyscan -t ed25519 <host>' without the host name) or the path "
            "of a known_hosts file that lists it"
        )
    if host_key and known_hosts:
        raise SiteConfigError(f"connection {conn_id!r} sets both host_key and known_hosts: keep one of them")
    if host_key is not None and (not isinstance(host_key, str) or len(host_key.split()) < 2):
        raise SiteConfigError(
            f"connection {conn_id!r}: host_key must be '<key type> <base64 key>', e.g. 'ssh-ed25519 AAAA...'"
        )
    if known_hosts is not None and (
        not isinstance(known_hosts, str) or known_hosts.strip().lower() == "none"
    ):
        raise SiteConfigError(
            f"connection {conn_id!r}: known_hosts {known_hosts!r} must be the path of a known_hosts file"
        )


def check_site_path(where: str, key: str, value: Any) -> str:
    """Return ``value`` as a normalised absolute POSIX path without ``..``; raise otherwise."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise SiteConfigError(f"{where}: {key} {value!r} must be an absolute path such as '/data/b2cal'")
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise SiteConfigError(f"{where}: {key} {value!r} contains a control character; remove it")
    if ".." in PurePosixPath(value).parts:
        raise SiteConfigError(f"{where}: {key} {value!r} contains '..'; give the folder without it")
    return str(PurePosixPath(value))


def _mapping(where: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SiteConfigError(f"{where}: {key} {value!r} must be an object of option names to values")
    return dict(value)


def _basf2_setup(where: str, value: Any) -> dict[str, str]:
    if value is None or value == "":
        return {}
    commands = {ANY_RELEASE: value} if isinstance(value, str) else value
    if not isinstance(commands, Mapping):
        raise SiteConfigError(
            f"{where}: basf2_setup {value!r} must be a command, or an object of release name to command"
        )
    checked: dict[str, str] = {}
    for release, command in commands.items():
        if not isinstance(command, str) or not command.strip():
            raise SiteConfigError(
                f"{where}: basf2_setup[{release!r}] {command!r} must be a non-empty command"
            )
        if any(character in command for character in "\0\r\n"):
            raise SiteConfigError(
                f"{where}: basf2_setup[{release!r}] contains a line break; join commands with ';' or '&&'"
            )
        checked[str(release)] = command
    return checked


def _path_template(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SiteConfigError(
            f"{where}: path_template {value!r} must be a string like {DEFAULT_PATH_TEMPLATE!r}"
        )
    try:
        folder = value.format(tag="hadron_calib", exp=26, run=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise SiteConfigError(
            f"{where}: path_template {value!r} does not format with tag, exp and run ({exc}); "
            f"use only those fields, e.g. {DEFAULT_PATH_TEMPLATE!r}"
        ) from None
    if folder.startswith("/") or ".." in PurePosixPath(folder).parts:
        raise SiteConfigError(f"{where}: path_template {value!r} must be relative and without '..'")
    return value


def _database_chain(where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list):
        raise SiteConfigError(f"{where}: database_chain {value!r} must be a list of global tag names")
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            raise SiteConfigError(f"{where}: database_chain entry {tag!r} must be a global tag name")
    return list(value)


def _env(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SiteConfigError(f"{where}: env {value!r} must be an object of variable names to values")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise SiteConfigError(
                f"{where}: env name {name!r} is invalid; use letters, digits and '_', "
                "not starting with a digit"
            )
        text = str(item)
        if any(character in text for character in "\0\r\n"):
            raise SiteConfigError(f"{where}: env[{name!r}] contains a line break or NUL; remove it")
        env[name] = text
    return env


def _positive(where: str, key: str, value: Any, *, integer: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or number <= 0
        or (integer and number != int(number))
    ):
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise SiteConfigError(f"{where}: {key} {value!r} must be {kind}")
    return number


def _program(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not PROGRAM.fullmatch(value):
        raise SiteConfigError(
            f"{where}: {key} {value!r} must be a program name or path of letters, digits and '_./+-'"
        )
    return value


def parse_validation_step(where: str, value: Any) -> ValidationStep | None:
    """Check the extra ``validation`` and return its step, or ``None`` when it is absent or null.

    The command and every option become separate arguments, quoted for the site's shell, so an option
    is never split or read as a shell word. The command must still be a plain program name or path.

    :param where: the connection, for messages, e.g. ``connection 'b2cal_site_bnl'``.
    :raises SiteConfigError: naming the value and the fix.
    """
    if value is None:
        return None
    example = '{"command": "b2val-prompt-run", "options": [], "timeout": 1800}'
    if not isinstance(value, Mapping):
        raise SiteConfigError(f"{where}: validation {value!r} must be an object like {example}")
    unknown = sorted(str(key) for key in value if key not in VALIDATION_KEYS)
    if unknown:
        raise SiteConfigError(
            f"{where}: validation has the unknown keys {', '.join(unknown)}; "
            f"use only {', '.join(VALIDATION_KEYS)}, e.g. {example}"
        )
    if "command" not in value:
        raise SiteConfigError(f"{where}: validation lacks 'command'; give the program, e.g. {example}")
    command = _program(where, "validation.command", value["command"])
    options = value.get("options") or []
    if isinstance(options, str) or not isinstance(options, list):
        raise SiteConfigError(
            f"{where}: validation.options {options!r} must be a list of arguments, e.g. "
            '["--plots", "3"]; a single string would not be split'
        )
    checked: list[str] = []
    for index, option in enumerate(options):
        if not isinstance(option, str | int | float) or isinstance(option, bool):
            raise SiteConfigError(
                f"{where}: validation.options[{index}] {option!r} must be a string or a number"
            )
        text = str(option)
        if any(ord(character) < 32 or ord(character) == 127 for character in text):
            raise SiteConfigError(
                f"{where}: validation.options[{index}] {text!r} contains a control character; remove it"
            )
        checked.append(text)
    timeout = _positive(where, "validation.timeout", value.get("timeout", DEFAULT_VALIDATION_TIMEOUT))
    return ValidationStep(command=command, options=tuple(checked), timeout=timeout)


def _cdst_command(where: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise SiteConfigError(
            f"{where}: cdst_command {value!r} must be a non-empty list of arguments, e.g. "
            '["produce_cdst", "--bucket", "{bucket}"]'
        )
    return [str(part) for part in value]


__all__ = [
    "ANY_RELEASE",
    "BACKENDS",
    "FILE_SOURCES",
    "SiteConfigError",
    "SiteSettings",
    "TRANSPORTS",
    "ValidationStep",
    "build_skim_source",
    "check_host_key_extras",
    "check_site_path",
    "parse_site_settings",
    "parse_validation_step",
]
