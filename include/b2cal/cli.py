"""The ``b2cal`` command: database set-up, catalog import, development services, demo and end-to-end run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from b2cal.catalog import CatalogError, load_packaged_release, load_release_file, packaged_releases
from b2cal.db import inventory, store
from b2cal.db.engine import default_url, session_scope, upgrade
from b2cal.iov import IoV

log = logging.getLogger("b2cal")


def _database_url(args: argparse.Namespace) -> str:
    return args.db_url or os.environ.get("B2CAL_DB_URL") or default_url()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the plugin database."""
    url = _database_url(args)
    upgrade(url)
    print(f"plugin database at {url.split('@')[-1]} is up to date")
    return 0


def cmd_import_catalog(args: argparse.Namespace) -> int:
    """Import a release catalog file, or one shipped with the package, into the plugin database."""
    try:
        if args.file:
            catalog = load_release_file(args.file)
            source = str(args.file)
        else:
            catalog = load_packaged_release(args.release)
            source = f"packaged {args.release}"
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    url = _database_url(args)
    upgrade(url)
    actor = os.environ.get("USER", "cli")
    with session_scope(url) as session:
        store.import_catalog(session, catalog, source=source, actor=actor)
        for site in args.site or ():
            inventory.register_release(session, site, catalog.release, source=source, actor=actor)
    levels = catalog.levels()
    print(
        f"imported {catalog.release}: {len(catalog)} calibrations, {len(levels[0]) if levels else 0} roots, "
        f"{len(levels)} levels"
    )
    return 0


def cmd_dev_services(argv: list[str]) -> int:
    """Run the development Jira, conditions database and run registry until interrupted."""
    from b2cal.devservices.server import main

    return main(argv)


def cmd_dev_cdst_production(args: argparse.Namespace) -> int:
    """Stand in for cDST production: write one placeholder cDST file per raw skim file of the bucket."""
    bucket = IoV.parse(args.bucket)
    raw_root, cdst_root = Path(args.raw_root), Path(args.cdst_root)
    written = 0
    for raw_file in sorted(raw_root.glob("*/e*/r*/*.root")):
        exp = int(raw_file.parent.parent.name[1:])
        run = int(raw_file.parent.name[1:])
        if not bucket.contains(exp, run):
            continue
        target = cdst_root / raw_file.relative_to(raw_root)
        target = target.with_name(target.stem + "_cdst.root")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"cDST placeholder of " + raw_file.name.encode())
            written += 1
    print(f"cDST production for bucket {bucket}: {written} files written below {cdst_root}")
    return 0


def _stack_config(args: argparse.Namespace, autopilot: bool, **sites: Any) -> Any:
    from b2cal.stack import StackConfig

    return StackConfig(
        home=Path(args.home).resolve(),
        api_port=args.port,
        jira_port=args.jira_port,
        conddb_port=args.conddb_port,
        runregistry_port=args.runregistry_port,
        poll_interval=args.poll_interval,
        job_seconds=args.job_seconds,
        autopilot=autopilot,
        rucio=not args.no_rucio,
        rucio_port=args.rucio_port,
        **sites,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the whole product and keep it running until interrupted.

    The demo continues with the requests, tickets and global tags that an earlier demo in the same
    home folder left; ``--fresh`` deletes them first.
    """
    from b2cal.stack import DAG_ID, DEMO_SITES, DEMO_SSH_SITES, Stack, clear_home

    # KEK and DESY are reached over SSH through a loopback sshd when openssh-server is installed.
    config = _stack_config(args, autopilot=args.autopilot, sites=DEMO_SITES, ssh_sites=DEMO_SSH_SITES)
    if args.fresh:
        try:
            removed = clear_home(config)
        except RuntimeError as error:
            print(f"b2cal demo: error: {error}", file=sys.stderr)
            return 1
        print(f"Starting from scratch: deleted {len(removed)} entries of earlier demos in {config.home}.")
    elif (config.airflow_home / "airflow.db").exists():
        print(
            f"Continuing the demo saved in {config.home}: its requests, tickets and global tags are kept. "
            "Start from scratch with `make demo DEMO_ARGS=--fresh` (or `b2cal demo --fresh`)."
        )
    stack = Stack(config)
    try:
        stack.setup()
        stack.start_services()
        stack.start_airflow()
        url = stack.config.api_url
        print(f"\nb2cal is running: {url}/  (calibration pages: {url}/b2cal/)")
        print(
            f"Log in with one of these users (passwords are also in {stack.config.home / 'passwords.json'}):"
        )
        for name, password in stack.passwords.items():
            print(f"  {name:8s} {password}")
        print(f"Trigger the DAG {DAG_ID} from the UI; its form is filled with a sample request.")
        if stack.sshd is not None:
            sites = ", ".join(config.ssh_sites)
            print(f"Sites {sites} run their jobs over SSH, through the sshd on 127.0.0.1:{stack.sshd.port}.")
        if stack.rucio is not None:
            print(
                f"Rucio runs on {stack.rucio.url}; the connection, with its password, is in "
                f"{stack.rucio.connection_file}."
            )
        print("Press Ctrl-C to stop.")
        while True:
            stack._check_alive()
            time.sleep(2)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stack.stop()
    return 0


def cmd_e2e(args: argparse.Namespace) -> int:
    """Run one full request on the real catalog headless and check the running tag."""
    from b2cal.e2e import run_e2e

    summary = run_e2e(_stack_config(args, autopilot=True), calibrations=args.calibration or [])
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``b2cal`` command."""
    parser = argparse.ArgumentParser(prog="b2cal", description=__doc__)
    parser.add_argument(
        "--db-url", help="plugin database URL (default: $B2CAL_DB_URL or AIRFLOW_HOME/b2cal.db)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    upgrade_parser = sub.add_parser("db-upgrade", help="create or migrate the plugin database")
    upgrade_parser.set_defaults(func=cmd_db_upgrade)

    imp = sub.add_parser("import-catalog", help="import a basf2 release's calibration catalog")
    group = imp.add_mutually_exclusive_group()
    group.add_argument("--file", type=Path, help="a release catalog JSON file")
    group.add_argument(
        "--release", default="release-11-00-00", help=f"a packaged release: {', '.join(packaged_releases())}"
    )
    imp.add_argument(
        "--site",
        action="append",
        help="make the release available to requests at this site (repeatable); release discovery "
        "does this for sites it visits",
    )
    imp.set_defaults(func=cmd_import_catalog)

    sub.add_parser("dev-services", help="run the development services (options: b2cal dev-services --help)")

    cdst = sub.add_parser("dev-cdst-production", help="stand in for cDST production on the local site")
    cdst.add_argument("--raw-root", required=True)
    cdst.add_argument("--cdst-root", required=True)
    cdst.add_argument("--bucket", required=True, help="the bucket IoV as e1,r1,e2,r2")
    cdst.set_defaults(func=cmd_dev_cdst_production)

    for name, func, home, help_text in (
        ("demo", cmd_demo, ".demo", "start the whole product on 127.0.0.1 and keep it running"),
        ("e2e", cmd_e2e, ".e2e", "run one request headless; exit 0 when the running tag has its payloads"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--home", default=home, help="folder for every file of the run")
        demo = name == "demo"
        command.add_argument("--port", type=int, default=8080 if demo else 8180, help="API server port")
        command.add_argument("--jira-port", type=int, default=8091 if name == "demo" else 8191)
        command.add_argument("--conddb-port", type=int, default=8092 if name == "demo" else 8192)
        command.add_argument("--runregistry-port", type=int, default=8093 if name == "demo" else 8193)
        command.add_argument(
            "--poll-interval", type=float, default=5.0 if demo else 4.0, help="seconds between two polls"
        )
        command.add_argument(
            "--job-seconds", type=float, default=20.0 if demo else 3.0, help="seconds a stand-in job runs"
        )
        command.add_argument(
            "--rucio-port", type=int, default=0, help="port of the Rucio server (default: a free one)"
        )
        command.add_argument(
            "--no-rucio",
            action="store_true",
            help="run without a Rucio server, so requests skip the cDST registration",
        )
        command.set_defaults(func=func)
        if name == "demo":
            command.add_argument(
                "--autopilot", action="store_true", help="close each ticket once its payloads are uploaded"
            )
            command.add_argument(
                "--fresh",
                action="store_true",
                help="delete the databases, tickets, global tags, site folders, logs and passwords that "
                "earlier demos left in the home folder, and start from scratch (default: continue with them)",
            )
        else:
            command.add_argument(
                "--calibration",
                action="append",
                help="run only this calibration and its dependencies (repeatable)",
            )
    return parser


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the stack, so the demo and e2e commands stop the processes they started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the ``b2cal`` command."""
    args_list = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args_list[:1] == ["dev-services"]:
        return cmd_dev_services(args_list[1:])
    args = build_parser().parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
