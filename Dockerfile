# The stocktrace service and its command line. docker-compose.yml runs it beside Mosquitto, TimescaleDB and
# Grafana; on its own: docker run -e STOCKTRACE_DATABASE_URL=... -e STOCKTRACE_MQTT_URL=... -p 8080:8080 stocktrace
#
# One stage: every dependency (psycopg[binary], numpy, msgspec, protobuf, ...) ships a prebuilt wheel for this
# platform, so no compiler and nothing to leave behind in a build stage.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

COPY . .
RUN pip install --no-deps . && rm -rf /src/build

RUN useradd --create-home --uid 10001 stocktrace
USER stocktrace
WORKDIR /home/stocktrace

# In a container the API must listen on every interface, or a published port cannot reach it.
ENV STOCKTRACE_API_HOST=0.0.0.0
EXPOSE 8080

# No HEALTHCHECK here: the simulator runs from this image too and serves no API. docker-compose.yml checks
# /healthz on the service alone.
ENTRYPOINT ["stocktrace"]
CMD ["run"]
