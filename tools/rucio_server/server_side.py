"""Run steps that need the Rucio server package, inside the server's own virtual environment.

``rucioctl.py`` calls this script with the server venv's Python and ``RUCIO_CONFIG`` pointing at the
generated ``rucio.cfg``. Commands:

``create-database`` / ``drop-database``
    Create or drop a PostgreSQL database through an administrator URL.
``bootstrap``
    Optionally create a PostgreSQL database, then build the schema, stamp the alembic head, create the
    root account with its userpass identity, the RSEs on local folders, their distances and quotas,
    and the scope. It writes to the database directly, before the server starts.
``transfers``
    Run the judge evaluator and the conveyor (submitter, poller, finisher) with the mock transfer tool,
    once or in a loop, and with ``--repair`` the judge repairer too.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("rucio_server")


def create_database(admin_url: str, name: str) -> None:
    """Create the database ``name``, dropping an earlier one of the same name."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'drop database if exists "{name}" with (force)')
        connection.execute(f'create database "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    """Drop the database ``name`` if it exists."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'drop database if exists "{name}" with (force)')


def reset() -> None:
    """Create the schema and the root account in an empty database."""
    from rucio.db.sqla.util import build_database, create_base_vo, create_root_account

    build_database()
    create_base_vo()
    create_root_account()


def configure(rse_root: Path, rses: list[str], scope: str, account: str = "root") -> None:
    """Create deterministic disk RSEs with a ``file`` protocol below ``rse_root``, plus the scope.

    Transfers need a distance between every pair of RSEs, and rules need a quota for the account. The
    calls go through Rucio's gateway layer, with its permission checks, straight to the database, so
    the server need not run yet.
    """
    from rucio.gateway import account_limit
    from rucio.gateway import rse as rse_gateway
    from rucio.gateway import scope as scope_gateway

    for rse in rses:
        folder = rse_root / rse
        folder.mkdir(parents=True, exist_ok=True)
        rse_gateway.add_rse(rse, issuer=account, deterministic=True, rse_type="DISK")
        protocol = {
            "scheme": "file",
            "hostname": "localhost",
            "port": 0,
            "prefix": f"{folder}/",
            "impl": "rucio.rse.protocols.posix.Default",
            "domains": {
                "lan": {"read": 1, "write": 1, "delete": 1},
                "wan": {
                    "read": 1,
                    "write": 1,
                    "delete": 1,
                    "third_party_copy_read": 1,
                    "third_party_copy_write": 1,
                },
            },
        }
        rse_gateway.add_protocol(rse, issuer=account, data=protocol)
        rse_gateway.add_rse_attribute(rse, "site", rse.split("-")[0], issuer=account)
        account_limit.set_local_account_limit(account, rse, 10**15, issuer=account)
    for source in rses:
        for destination in rses:
            if source != destination:
                rse_gateway.add_distance(source, destination, issuer=account, distance=1)
    scope_gateway.add_scope(scope, account, issuer=account)


def bootstrap(args: argparse.Namespace) -> None:
    """Create the database if asked, then the schema, the root account, the RSEs and the scope."""
    if args.admin_url:
        create_database(args.admin_url, args.name)
    reset()
    configure(args.rse_root, [rse for rse in args.rses.split(",") if rse], args.scope)


def run_transfers_once(repair: bool) -> None:
    """Run every daemon step once, in the order that moves a new rule to OK.

    The judge evaluator and repairer are called through their ``run_once`` functions (Rucio 41.5.1)
    because their ``once=True`` loops first wait one second each for workers to share the work.
    """
    from rucio.daemons.common import HeartbeatHandler
    from rucio.daemons.conveyor.finisher import finisher
    from rucio.daemons.conveyor.poller import poller
    from rucio.daemons.conveyor.submitter import submitter
    from rucio.daemons.judge import evaluator, repairer

    def repair_stuck_rules() -> None:
        with HeartbeatHandler(executable="judge-repairer", renewal_interval=30) as heartbeat:
            repairer.run_once(paused_rules={}, delta=-1, heartbeat_handler=heartbeat)

    if repair:
        repair_stuck_rules()
    with HeartbeatHandler(executable="judge-evaluator", renewal_interval=30) as heartbeat:
        evaluator.run_once(paused_dids={}, did_limit=1000, heartbeat_handler=heartbeat)
    submitter(once=True, partition_wait_time=0, transfertools=["mock"], bulk=1000)
    poller(once=True, older_than=0, partition_wait_time=0, transfertool="mock")
    finisher(once=True, partition_wait_time=0, bulk=1000)
    if repair:
        repair_stuck_rules()


def run_transfers(repair: bool, loop: bool, interval: float) -> None:
    """Run the daemon steps once, or every ``interval`` seconds until SIGTERM or SIGINT."""
    if not loop:
        run_transfers_once(repair)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("Transfer daemons running every %.1f s (repair=%s)", interval, repair)
    while not stop.is_set():
        started = time.monotonic()
        try:
            run_transfers_once(repair)
        except Exception:  # noqa: BLE001 - a daemon loop logs a failed cycle and goes on
            log.exception("Transfer cycle failed; retrying in %.1f s", interval)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    log.info("Transfer daemons stopped")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("create-database", "drop-database"):
        command = commands.add_parser(name)
        command.add_argument(
            "--admin-url", required=True, help="PostgreSQL URL of a role that may create databases"
        )
        command.add_argument("--name", required=True, help="database name")
    command = commands.add_parser("bootstrap")
    command.add_argument("--admin-url", help="with --name: first create this PostgreSQL database")
    command.add_argument("--name", help="the PostgreSQL database to create")
    command.add_argument(
        "--rse-root", required=True, type=Path, help="folder that contains one folder per RSE"
    )
    command.add_argument("--rses", required=True, help="comma-separated RSE names")
    command.add_argument("--scope", required=True)
    command = commands.add_parser("transfers")
    command.add_argument("--repair", action="store_true", help="also run the judge repairer for STUCK rules")
    command.add_argument("--loop", action="store_true", help="repeat until SIGTERM")
    command.add_argument("--interval", type=float, default=1.0, help="seconds between two cycles with --loop")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "create-database":
        create_database(args.admin_url, args.name)
    elif args.command == "drop-database":
        drop_database(args.admin_url, args.name)
    elif args.command == "bootstrap":
        bootstrap(args)
    elif args.command == "transfers":
        run_transfers(args.repair, args.loop, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
