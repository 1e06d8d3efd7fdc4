"""File sources: which files of each data tag a site holds for each run.

Input selection asks a :class:`FileSource` for the files of one data tag (skim) and a list of runs,
so whether a skim exists for a run is decided by what the site holds, not by what the run registry
says was produced. Two sources exist:

:class:`PathTemplateSource`
    Files in folders built from a path template, e.g. ``{tag}/e{exp:04d}/r{run:05d}`` below a
    storage root, listed on the local file system or over SSH (:class:`SshDirectoryLister`).
:class:`RucioFileSource`
    The replicas at the site's RSE of the skim datasets ``skim/<data_tag>/eNNNN/rNNNNN``, listed
    through a rucio-clients ``Client``.

Both return files sorted by path, so a selection is the same on every call.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

RunKey = tuple[int, int]
#: ``(file name, size in bytes)`` per folder, as a :class:`DirectoryLister` returns it.
Listing = dict[str, list[tuple[str, int | None]]]
DEFAULT_PATH_TEMPLATE = "{tag}/e{exp:04d}/r{run:05d}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One input file: its path or URI, and its event count and size when the source knows them."""

    path: str
    events: int | None = None
    size: int | None = None


class FileSource(Protocol):
    """Lists the files a site holds per data tag and run."""

    #: A short description for explanations and logs, e.g. ``Rucio b2cal@BNL-DISK``.
    description: str

    def list_files(
        self, data_tag: str, runs: Sequence[RunKey], *, with_events: bool = False
    ) -> dict[RunKey, list[FileEntry]]:
        """Return the files of ``data_tag`` for each run of ``runs`` that has any, sorted by path.

        :param with_events: also fill in :attr:`FileEntry.events` where the source can, which may
            cost more calls
        """
        ...


class StaticFileSource:
    """A file source over a fixed mapping ``{(data_tag, (exp, run)): [FileEntry, ...]}``.

    Used by the benchmarks and tests, and to replay a listing that was fetched once.
    """

    def __init__(
        self, files: Mapping[tuple[str, RunKey], Sequence[FileEntry]], description: str = "static listing"
    ) -> None:
        self._files = files
        self.description = description

    def list_files(
        self, data_tag: str, runs: Sequence[RunKey], *, with_events: bool = False
    ) -> dict[RunKey, list[FileEntry]]:
        """Return the stored files of ``data_tag`` for ``runs``."""
        found: dict[RunKey, list[FileEntry]] = {}
        for key in runs:
            entries = self._files.get((data_tag, key))
            if entries:
                found[key] = list(entries)
        return found


class CallableFileSource:
    """Adapt a ``list_files(tag, run) -> [path, ...]`` function to the :class:`FileSource` protocol.

    :param run_of: turns a run key back into the object the function expects
    """

    def __init__(
        self,
        function: Callable[[str, Any], Sequence[str]],
        run_of: Callable[[RunKey], Any],
        description: str = "file lister",
    ) -> None:
        self._function = function
        self._run_of = run_of
        self.description = description

    def list_files(
        self, data_tag: str, runs: Sequence[RunKey], *, with_events: bool = False
    ) -> dict[RunKey, list[FileEntry]]:
        """Call the function once per run."""
        found: dict[RunKey, list[FileEntry]] = {}
        for key in runs:
            paths = self._function(data_tag, self._run_of(key))
            if paths:
                found[key] = [FileEntry(str(path)) for path in paths]
        return found


# -- path templates ----------------------------------------------------------------------------------


class DirectoryLister(Protocol):
    """Lists the files of many folders in one go."""

    def list_directories(
        self, folders: Sequence[str], pattern: str
    ) -> dict[str, list[tuple[str, int | None]]]:
        """Return ``(file name, size in bytes)`` of the files matching ``pattern`` in each existing folder.

        Folders that do not exist are left out of the result.
        """
        ...


class LocalDirectoryLister:
    """List folders on this machine's file system."""

    description = "local"

    def list_directories(
        self, folders: Sequence[str], pattern: str
    ) -> dict[str, list[tuple[str, int | None]]]:
        """List each folder with ``os.scandir``."""
        found: Listing = {}
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    files: list[tuple[str, int | None]] = [
                        (entry.name, entry.stat().st_size)
                        for entry in entries
                        if entry.is_file() and fnmatch.fnmatchcase(entry.name, pattern)
                    ]
            except (FileNotFoundError, NotADirectoryError):
                continue
            found[folder] = files
        return found


class SshCommandError(RuntimeError):
    """A listing command run over SSH failed."""


class SshDirectoryLister:
    """List folders on a remote machine with one ``find`` command per batch of folders.

    :param client: a connected ``paramiko.SSHClient`` (or an object with the same ``exec_command``)
    :param host: the host name, for messages
    :param batch_size: folders per command; keeps the command line well below the kernel's limit
    :param timeout: seconds to wait for one command
    """

    def __init__(self, client: Any, host: str = "", batch_size: int = 500, timeout: float = 120.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}, expected at least 1")
        self.client = client
        self.host = host
        self.batch_size = batch_size
        self.timeout = timeout
        self.description = f"ssh {host}" if host else "ssh"

    @staticmethod
    def command(folders: Sequence[str], pattern: str) -> str:
        """Return the shell command that prints ``<folder>\\0<name>\\0<size>\\0`` for every matching file.

        Missing folders make ``find`` complain on stderr; those lines are expected and skipped.
        """
        quoted = " ".join(shlex.quote(folder) for folder in folders)
        return (
            f"find {quoted} -mindepth 1 -maxdepth 1 -type f -name {shlex.quote(pattern)} "
            "-printf '%h\\0%f\\0%s\\0'"
        )

    def list_directories(
        self, folders: Sequence[str], pattern: str
    ) -> dict[str, list[tuple[str, int | None]]]:
        """Run the listing command for each batch of folders and parse its output."""
        found: Listing = {}
        for start in range(0, len(folders), self.batch_size):
            batch = list(folders[start : start + self.batch_size])
            output = self._run(self.command(batch, pattern))
            fields = output.split("\0")
            for index in range(0, len(fields) - 2, 3):
                folder, name, size = fields[index : index + 3]
                found.setdefault(folder, []).append((name, int(size)))
        return found

    def _run(self, command: str) -> str:
        _, stdout, stderr = self.client.exec_command(command, timeout=self.timeout)
        output = stdout.read().decode("utf-8", "surrogateescape")
        errors = stderr.read().decode("utf-8", "replace")
        status = stdout.channel.recv_exit_status()
        unexpected = [
            line for line in errors.splitlines() if line and "No such file or directory" not in line
        ]
        if status not in (0, 1) or unexpected:
            raise SshCommandError(
                f"listing files on {self.host or 'the SSH host'} failed with exit status {status}: "
                f"{'; '.join(unexpected[:3]) or errors.strip()[:300]}; check the site's storage_root and "
                "that the SSH account can read it"
            )
        return output


def check_path_template(template: str) -> str:
    """Return ``template`` if it formats with ``tag``, ``exp`` and ``run``; raise ``ValueError`` otherwise."""
    for name in ("{tag", "{exp", "{run"):
        if name not in template:
            raise ValueError(
                f"path template {template!r} lacks {name}}}: it must name the data tag, experiment and run, "
                f"e.g. {DEFAULT_PATH_TEMPLATE!r}"
            )
    try:
        template.format(tag="hadron_calib", exp=26, run=1)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"path template {template!r} does not format with tag, exp and run ({error}); "
            f"use only those fields, e.g. {DEFAULT_PATH_TEMPLATE!r}"
        ) from None
    return template


class PathTemplateSource:
    """Files in per-run folders below a storage root, laid out by a path template.

    :param root: the storage root
    :param template: the folder of one data tag and run, relative to ``root``
    :param lister: how folders are listed; the local file system by default
    :param pattern: the file name pattern
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        template: str = DEFAULT_PATH_TEMPLATE,
        lister: DirectoryLister | None = None,
        pattern: str = "*.root",
    ) -> None:
        self.root = str(root).rstrip("/") or "/"
        self.template = check_path_template(template)
        self.lister: DirectoryLister = lister or LocalDirectoryLister()
        self.pattern = pattern
        where = getattr(self.lister, "description", type(self.lister).__name__)
        self.description = f"{self.root}/{self.template} ({where})"

    def folder(self, data_tag: str, key: RunKey) -> str:
        """Return the folder of one data tag and run."""
        return f"{self.root}/{self.template.format(tag=data_tag, exp=key[0], run=key[1])}"

    def list_files(
        self, data_tag: str, runs: Sequence[RunKey], *, with_events: bool = False
    ) -> dict[RunKey, list[FileEntry]]:
        """List the folders of ``runs``; event counts are unknown to this source."""
        folders = {self.folder(data_tag, key): key for key in runs}
        listing = self.lister.list_directories(list(folders), self.pattern)
        found: dict[RunKey, list[FileEntry]] = {}
        for folder, files in listing.items():
            key = folders.get(folder.rstrip("/"))
            if key is None or not files:
                continue
            found[key] = [FileEntry(f"{folder}/{name}", None, size) for name, size in sorted(files)]
        return found


# -- Rucio -------------------------------------------------------------------------------------------


def skim_dataset(data_tag: str, exp: int, run: int) -> str:
    """Return the name of the skim dataset of one run, ``skim/<data_tag>/eNNNN/rNNNNN``."""
    return f"skim/{data_tag}/e{exp:04d}/r{run:05d}"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pfn_to_path(pfn: str) -> str:
    """Turn a ``file://`` PFN into a local path; return any other URI unchanged."""
    parts = urlsplit(pfn)
    if parts.scheme == "file":
        return unquote(parts.path)
    return pfn


def pfn_path(pfn: str) -> str:
    """Return the path of a PFN of any protocol, without scheme and host, with one leading ``/``.

    ``root://door.example:1094//pnfs/x.root`` becomes ``/pnfs/x.root``.
    """
    return "/" + unquote(urlsplit(pfn).path).lstrip("/")


class RucioFileSource:
    """The replicas of the skim datasets at one RSE, through a rucio-clients ``Client``.

    The calls are ``list_dids`` (which run datasets of a skim exist, one wildcard call per
    experiment), ``list_replicas`` on those datasets restricted to the RSE (only available replicas
    are returned, each with its parent datasets) and, when event counts are needed,
    ``get_metadata_bulk`` on the files, whose ``events`` metadata holds the count.

    A file's name in the result is its PFN at the RSE: a ``file://`` PFN becomes a local path and
    any other PFN stays a URI. With ``paths_only`` every PFN becomes its path, for a site whose
    backend puts a prefix such as an xrootd door in front of every input path.

    :param client: a ``rucio.client.Client``
    :param scope: the scope of the skim datasets
    :param rse: the site's RSE, e.g. ``BNL-DISK``
    :param scheme: the protocol of the PFNs, e.g. ``root`` or ``file``; ``None`` takes the
        alphabetically first PFN of each replica
    :param paths_only: give the path of each PFN, without scheme and host
    :param dataset_name: builds a run's dataset name from data tag, experiment and run
    :param chunk_size: datasets per ``list_replicas`` call
    """

    def __init__(
        self,
        client: Any,
        scope: str,
        rse: str,
        *,
        scheme: str | None = None,
        paths_only: bool = False,
        dataset_name: Callable[[str, int, int], str] = skim_dataset,
        chunk_size: int = 200,
    ) -> None:
        if not rse:
            raise ValueError("rse is empty: name the site's storage element, e.g. 'BNL-DISK'")
        self.client = client
        self.scope = scope
        self.rse = rse
        self.scheme = scheme
        self.paths_only = paths_only
        self.dataset_name = dataset_name
        self.chunk_size = chunk_size
        self.description = f"Rucio {scope}@{rse}" + (f" ({scheme})" if scheme else "")
        self._names: dict[str, str] = {}

    def existing_datasets(self, data_tag: str, runs: Sequence[RunKey]) -> dict[str, RunKey]:
        """Return the names of the run datasets of ``data_tag`` that exist, with their run."""
        wanted = {self.dataset_name(data_tag, exp, run): (exp, run) for exp, run in runs}
        by_experiment: dict[int, list[RunKey]] = defaultdict(list)
        for key in runs:
            by_experiment[key[0]].append(key)
        existing: dict[str, RunKey] = {}
        for exp in sorted(by_experiment):
            # One wildcard listing per experiment instead of one lookup per run.
            pattern = self.dataset_name(data_tag, exp, 0).rsplit("/", 1)[0] + "/r*"
            for item in self.client.list_dids(self.scope, [{"name": pattern}], did_type="dataset"):
                name = item if isinstance(item, str) else item["name"]
                if name in wanted:
                    existing[name] = wanted[name]
        return existing

    def list_files(
        self, data_tag: str, runs: Sequence[RunKey], *, with_events: bool = False
    ) -> dict[RunKey, list[FileEntry]]:
        """List the available replicas at the RSE of each run's dataset."""
        datasets = self.existing_datasets(data_tag, runs)
        names = sorted(datasets)
        by_parent = {f"{self.scope}:{name}": key for name, key in datasets.items()}
        found: dict[RunKey, list[FileEntry]] = defaultdict(list)
        for chunk in _chunks(names, self.chunk_size):
            dids = [{"scope": self.scope, "name": name} for name in chunk]
            options: dict[str, Any] = {"rse_expression": self.rse, "resolve_parents": True}
            if self.scheme:
                options["schemes"] = [self.scheme]
            for replica in self.client.list_replicas(dids, **options):
                pfns = (replica.get("rses") or {}).get(self.rse) or []
                key = next((by_parent[p] for p in replica.get("parents") or () if p in by_parent), None)
                if not pfns or key is None:
                    continue
                pfn = sorted(pfns)[0]
                path = pfn_path(pfn) if self.paths_only else pfn_to_path(pfn)
                found[key].append(FileEntry(path, None, replica.get("bytes")))
                self._names[path] = replica["name"]
        if with_events:
            found = self._with_events(found)
        logger.debug(
            "Rucio %s:%s at %s: %d of %d runs have datasets, %d have replicas",
            self.scope,
            data_tag,
            self.rse,
            len(datasets),
            len(runs),
            len(found),
        )
        return {key: sorted(entries, key=lambda entry: entry.path) for key, entries in found.items()}

    def _with_events(self, found: Mapping[RunKey, list[FileEntry]]) -> dict[RunKey, list[FileEntry]]:
        """Fill in the event counts from the files' ``events`` metadata, in bulk calls."""
        names = [self._names[entry.path] for entries in found.values() for entry in entries]
        events: dict[str, int | None] = {}
        for chunk in _chunks(names, self.chunk_size):
            dids = [{"scope": self.scope, "name": name} for name in chunk]
            for item in self.client.get_metadata_bulk(dids):
                value = item.get("events")
                events[item["name"]] = int(value) if value is not None else None
        return {
            key: [FileEntry(e.path, events.get(self._names[e.path]), e.size) for e in entries]
            for key, entries in found.items()
        }
