#!/bin/bash
# Create the plugin database and its role on the first start of the PostgreSQL container.
# The postgres image runs the scripts of /docker-entrypoint-initdb.d once, on an empty data folder.
set -euo pipefail
: "${B2CAL_DB_PASSWORD:?set B2CAL_DB_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v b2cal_password="$B2CAL_DB_PASSWORD" <<'SQL'
CREATE ROLE b2cal LOGIN PASSWORD :'b2cal_password';
CREATE DATABASE b2cal OWNER b2cal;
SQL
