#!/usr/bin/env bash
# Installs and starts what stocktrace needs on a Debian 12 host: Mosquitto, PostgreSQL with TimescaleDB (built
# from Debian's source package for the local PostgreSQL), and the database. Idempotent: a second run only checks.
# Run as root (or with sudo available). Called by `make demo` and `make test`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
db_name=${STOCKTRACE_DB_NAME:-stocktrace}
apt_updated=""

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
    if [ -z "$(pg_version)" ]; then apt_install postgresql postgresql-contrib; fi
    local v; v=$(pg_version)
    if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
        say "starting PostgreSQL $v"
        $sudo pg_ctlcluster --skip-systemctl-redirect "$v" main start
    fi
}

ensure_timescaledb() {
    local v; v=$(pg_version)
    local pgc=/usr/lib/postgresql/$v/bin/pg_config
    if [ ! -f "$($pgc --sharedir)/extension/timescaledb.control" ]; then
        apt_install cmake gcc make dpkg-dev "postgresql-server-dev-$v" xz-utils
        local src=/etc/apt/sources.list.d/stocktrace-timescaledb-src.sources
        if ! apt-cache showsrc timescaledb 2>/dev/null | grep -q '^Package: timescaledb'; then
            # Debian 12 has no TimescaleDB; Debian 13 ships its source (Apache-licensed edition).
            say "adding Debian 13 source entries for timescaledb"
            printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                | $sudo tee "$src" >/dev/null
            $sudo apt-get update -qq
        fi
        local work; work=$(mktemp -d)
        say "building TimescaleDB for PostgreSQL $v in $work"
        (cd "$work" && apt-get source -qq --download-only timescaledb >/dev/null 2>&1 \
            && dpkg-source -x ./*.dsc src >build.log 2>&1 \
            && cmake -S src -B src/build -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$pgc" \
                -DAPACHE_ONLY=1 -DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF \
                -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF >>build.log 2>&1 \
            && make -C src/build -j"$(nproc)" >>build.log 2>&1 \
            && $sudo make -C src/build install >>build.log 2>&1) \
            || { echo "TimescaleDB build failed; see $work/build.log" >&2; exit 1; }
        rm -rf "$work"
    fi
    local conf=/etc/postgresql/$v/main/conf.d/stocktrace-timescaledb.conf
    if [ ! -f "$conf" ]; then
        say "enabling timescaledb in shared_preload_libraries"
        printf "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n" | $sudo tee "$conf" >/dev/null
    fi
    if [ "$(psql_admin -Atc 'show shared_preload_libraries')" != "timescaledb" ]; then
        say "restarting PostgreSQL $v to load timescaledb"
        $sudo pg_ctlcluster --skip-systemctl-redirect "$v" main restart
    fi
}

psql_admin() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql -X -q "$@"; else sudo -u postgres psql -X -q "$@"; fi
}

ensure_database() {
    if ! psql_admin -Atc "select 1 from pg_database where datname = '$db_name'" | grep -q 1; then
        say "creating database $db_name"
        psql_admin -c "create database \"$db_name\""
    fi
    psql_admin -d "$db_name" -c 'create extension if not exists timescaledb' >/dev/null 2>&1 || true
    # The service connects as the invoking user over the local socket; give that user a role.
    local me; me=$(id -un)
    if ! psql_admin -Atc "select 1 from pg_roles where rolname = '$me'" | grep -q 1; then
        psql_admin -c "create role \"$me\" login superuser"
    fi
}

ensure_mosquitto() {
    command -v mosquitto >/dev/null || apt_install mosquitto
    command -v mosquitto_sub >/dev/null || apt_install mosquitto-clients
    local main=/etc/mosquitto/mosquitto.conf
    local changed=""
    if ! grep -q '^include_dir /etc/mosquitto/conf.d' "$main"; then
        echo 'include_dir /etc/mosquitto/conf.d' | $sudo tee -a "$main" >/dev/null
        changed=1
    fi
    $sudo mkdir -p /etc/mosquitto/conf.d
    if ! cmp -s "$here/mosquitto.conf" /etc/mosquitto/conf.d/stocktrace.conf; then
        $sudo cp "$here/mosquitto.conf" /etc/mosquitto/conf.d/stocktrace.conf
        changed=1
    fi
    if [ -n "$changed" ] && pgrep -x mosquitto >/dev/null; then
        say "restarting Mosquitto with stocktrace's broker settings"
        $sudo pkill -x mosquitto || true
        for _ in $(seq 50); do pgrep -x mosquitto >/dev/null || break; sleep 0.1; done
    fi
    if ! pgrep -x mosquitto >/dev/null; then
        say "starting Mosquitto"
        $sudo mkdir -p /run/mosquitto && $sudo chown mosquitto: /run/mosquitto 2>/dev/null || true
        $sudo mosquitto -d -c "$main"
        for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
    fi
}

ensure_postgres
ensure_timescaledb
ensure_database
ensure_mosquitto
say "PostgreSQL $(pg_version) with TimescaleDB and Mosquitto are ready"
