#!/usr/bin/env bash
# Create the Rucio server's own virtual environment in the folder given as the first argument.
#
# The server distribution `rucio` caps its dependencies (urllib3, requests, SQLAlchemy, alembic...)
# below the versions Airflow needs, so it cannot share the project's venv. Only `rucio-clients`
# lives next to Airflow. Running the script again is cheap: it returns at once when the folder
# already contains the pinned versions.
set -euo pipefail

VENV="${1:?usage: make_venv.sh FOLDER   (for example .venv-rucio)}"
PYTHON="${PYTHON:-python3}"
RUCIO_VERSION="41.5.1"
# rucioctl.py passes --no-control-socket, an option of gunicorn 27; without it gunicorn 27.0.1
# creates a control socket in ~/.gunicorn.
GUNICORN_VERSION="27.0.1"
STAMP="$VENV/.b2cal-rucio-$RUCIO_VERSION-gunicorn-$GUNICORN_VERSION"

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import rucio, gunicorn, psycopg" 2>/dev/null; then
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
# Keep the venv out of git without touching the project's .gitignore.
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "rucio[postgresql]==$RUCIO_VERSION" "gunicorn==$GUNICORN_VERSION"
"$VENV/bin/python" -c "import rucio, gunicorn, psycopg"
touch "$STAMP"
echo "Rucio $RUCIO_VERSION server venv ready in $VENV"
