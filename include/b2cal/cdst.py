"""Output folders of the attempts of a request's cDST production.

cDST production runs as one job per request, in the job folder :data:`CDST_JOB`, and each start of
it is an attempt (see :mod:`b2cal.remote`). Every attempt writes its own output folder, so files made
with rejected payloads are never mixed with, or overwritten by, the files of a later attempt:

.. code-block:: text

    <cdst_root>/<data_tag>/eNNNN/rNNNNN/*_cdst.root                      attempt 1
    <cdst_root>/attempts/<request>/attempt-<n>/<data_tag>/eNNNN/rNNNNN/   attempt n > 1

Attempt 1 writes ``cdst_root`` itself, so a request whose cDST production runs once keeps the site's
usual layout. The later folders lie three levels deeper than a run folder, so a search for
``<data_tag>/eNNNN/rNNNNN`` below ``cdst_root`` never finds them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

#: The job folder name of cDST production, in place of a calibration name, and its entry in the DAG
#: run conf's ``clean_start``.
CDST_JOB = "cdst-production"
#: The folder below ``cdst_root`` that contains the output of attempts after the first.
ATTEMPTS_FOLDER = "attempts"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def check_attempt(attempt: int) -> int:
    """Return ``attempt`` if it is a valid cDST production attempt number.

    :raises ValueError: if ``attempt`` is not an integer of at least 1.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"cDST production attempt {attempt!r} is invalid: use an integer of at least 1")
    return attempt


def cdst_output_folder(cdst_root: str, request_uid: str, attempt: int) -> str:
    """Return the folder that attempt ``attempt`` of a request's cDST production writes.

    :raises ValueError: if ``attempt`` is not an integer of at least 1.
    """
    if check_attempt(attempt) == 1:
        return cdst_root
    request = _UNSAFE.sub("_", request_uid).strip(".") or "request"
    return str(PurePosixPath(cdst_root) / ATTEMPTS_FOLDER / request / f"attempt-{attempt}")
