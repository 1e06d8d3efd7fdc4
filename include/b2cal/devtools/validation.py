"""Stand-in for the site validation program ``b2val-prompt-run``, for development and tests.

A site may run a validation program in a calibration's job folder after the payloads are uploaded and
checked (the extra ``validation`` of the site connection, ``docs/sites.rst``). b2cal calls it as::

    b2val-prompt-run [options] <job folder> <validation folder>

with the job folder as the current directory. The stand-in reads the job's output databases
(``caf_outputdb_results/<Calibration>/database.txt``) and writes into the validation folder, which it
creates:

``summary.txt``
    one line per payload: calibration folder, payload, revision, IoV and MD5 of the file;
``<Calibration>_payloads.png``
    one grey-scale PNG per calibration folder, a bar per payload (``--plots`` of them per folder);
``validation_report.pdf``
    a one-page PDF that names the job folder and the number of payloads;
``validation_outputs.json``
    ``{"outputs": ["summary.txt", ...]}``: the files to publish, as paths relative to the validation
    folder, in the order they were written. The same paths are printed, one a line.

Exit status: 0 after success; 1 when the job folder or its output databases are missing or a
``database.txt`` cannot be read; 2 for invalid arguments (argparse). ``B2CAL_FAKE_VALIDATION_FAIL``
set to an exit status makes the run log an error and exit with it before it lists any output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

from b2cal.caf import OUTPUT_DB_DIR_NAME

OUTPUTS_FILE = "validation_outputs.json"
SUMMARY_FILE = "summary.txt"
REPORT_FILE = "validation_report.pdf"
FAIL_VARIABLE = "B2CAL_FAKE_VALIDATION_FAIL"
#: Width and height of a stand-in plot, in pixels.
PLOT_SIZE = 32


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="b2val-prompt-run",
        description="Validate a calibration job's output databases and list the files to publish "
        "(development stand-in).",
    )
    parser.add_argument("job_folder", type=Path, help="the calibration's job folder")
    parser.add_argument("output_folder", type=Path, help="the folder that receives the validation files")
    parser.add_argument(
        "--plots", type=int, default=1, help="plots per calibration folder (default 1, at least 1)"
    )
    parser.add_argument("--title", default="b2cal validation", help="title of the PDF report")
    return parser


def validation_run_main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in ``b2val-prompt-run`` and return its exit status."""
    args = _parser().parse_args(argv)
    if args.plots < 1:
        print(f"[ERROR] --plots {args.plots} must be at least 1", file=sys.stderr)
        return 2
    failure = os.environ.get(FAIL_VARIABLE, "").strip()
    if failure:
        print(f"[INFO] validating {args.job_folder}")
        print(f"[ERROR] validation of {args.job_folder} failed ({FAIL_VARIABLE}={failure})", file=sys.stderr)
        return int(failure) if failure.isdigit() and int(failure) > 0 else 1

    if not args.job_folder.is_dir():
        print(f"[ERROR] the job folder {args.job_folder} does not exist", file=sys.stderr)
        return 1
    databases = sorted((args.job_folder / OUTPUT_DB_DIR_NAME).glob("*/database.txt"))
    if not databases:
        print(
            f"[ERROR] {args.job_folder} has no {OUTPUT_DB_DIR_NAME}/*/database.txt: "
            "run the calibration before its validation",
            file=sys.stderr,
        )
        return 1
    try:
        rows = {database.parent.name: _read_database(database) for database in databases}
    except (OSError, ValueError) as exc:
        print(f"[ERROR] {exc}", file=sys.stderr)
        return 1

    args.output_folder.mkdir(parents=True, exist_ok=True)
    outputs = [SUMMARY_FILE]
    lines = [
        f"{folder} {name} {revision} {iov} {checksum}"
        for folder, payloads in rows.items()
        for name, revision, iov, checksum in payloads
    ]
    (args.output_folder / SUMMARY_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for folder, payloads in rows.items():
        for number in range(1, args.plots + 1):
            suffix = "" if args.plots == 1 else f"_{number}"
            name = f"{folder}_payloads{suffix}.png"
            (args.output_folder / name).write_bytes(
                _bar_plot([len(payloads) + number, *range(len(payloads))])
            )
            outputs.append(name)
    total = sum(len(payloads) for payloads in rows.values())
    report = _pdf(f"{args.title}: {args.job_folder.name}, {total} payloads in {len(rows)} folders")
    (args.output_folder / REPORT_FILE).write_bytes(report)
    outputs.append(REPORT_FILE)

    listing = json.dumps({"outputs": outputs}, indent=2) + "\n"
    temporary = args.output_folder / f".{OUTPUTS_FILE}.tmp"
    temporary.write_text(listing, encoding="utf-8")
    temporary.replace(args.output_folder / OUTPUTS_FILE)
    for name in outputs:
        print(name)
    return 0


def _read_database(database: Path) -> list[tuple[str, str, str, str]]:
    """Return ``(payload, revision, IoV, MD5)`` of each line of a ``database.txt``."""
    payloads = []
    for number, line in enumerate(database.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith("dbstore/"):
            raise ValueError(f"{database}:{number}: {line!r} is not 'dbstore/<Name> <revision> <IoV>'")
        name = parts[0].removeprefix("dbstore/")
        payload_file = database.parent / f"dbstore_{name}_rev_{parts[1]}.root"
        checksum = hashlib.md5(payload_file.read_bytes()).hexdigest() if payload_file.is_file() else "-"
        payloads.append((name, parts[1], parts[2], checksum))
    return payloads


def _bar_plot(heights: Sequence[int]) -> bytes:
    """Return a grey-scale PNG with one dark bar per height, scaled to the picture."""
    top = max(heights) or 1
    width = max(1, PLOT_SIZE // len(heights))
    rows = []
    for y in range(PLOT_SIZE):
        level = PLOT_SIZE - y
        pixels = bytes(
            40 if heights[min(x // width, len(heights) - 1)] * PLOT_SIZE >= level * top else 235
            for x in range(PLOT_SIZE)
        )
        rows.append(b"\x00" + pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", PLOT_SIZE, PLOT_SIZE, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def _pdf(text: str) -> bytes:
    """Return a one-page PDF that shows one line of text."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 50 750 Td ({escaped}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    document = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(document))
        document += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(document)
    document += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    document += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    document += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return document


if __name__ == "__main__":
    sys.exit(validation_run_main())
