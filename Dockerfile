# The b2cal image: Apache Airflow's official image with the b2cal plugin, DAGs and built docs.
#
#   docker build -t b2cal-airflow:latest .
#
# docker-compose.yaml builds it as the image of every Airflow service.

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

# Stage 1: build the HTML documentation that the plugin serves at /b2cal/docs/.
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS docs
ARG AIRFLOW_VERSION
COPY --chown=airflow:0 pyproject.toml README.md /opt/b2cal/
COPY --chown=airflow:0 include /opt/b2cal/include
COPY --chown=airflow:0 plugins /opt/b2cal/plugins
COPY --chown=airflow:0 docs /opt/b2cal/docs
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/b2cal sphinx \
    && sphinx-build -q -b html /opt/b2cal/docs /tmp/b2cal-docs

# Stage 2: the runtime image.
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
COPY --chown=airflow:0 pyproject.toml README.md /opt/b2cal/
COPY --chown=airflow:0 include /opt/b2cal/include
COPY --chown=airflow:0 plugins /opt/b2cal/plugins
# Pinning apache-airflow keeps pip from replacing the image's Airflow while it installs the bundle.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/b2cal
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --from=docs --chown=airflow:0 /tmp/b2cal-docs /opt/b2cal/docs-html
ENV B2CAL_DOCS_DIR=/opt/b2cal/docs-html
