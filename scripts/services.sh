# Sourced by scripts/run and scripts/test: installs what is missing (through
# apt) and makes sure a PostgreSQL and a Redis answer, starting private ones
# under $MAGE_STATE_DIR when none is reachable. Exports DATABASE_URL,
# REDIS_URL and the MAGE_TEST_* URLs.

MAGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAGE_STATE_DIR="${MAGE_STATE_DIR:-$MAGE_ROOT/.mage}"
mkdir -p "$MAGE_STATE_DIR"
# rustup's tools, also for shells that did not source ~/.cargo/env.
export PATH="$HOME/.cargo/bin:$PATH"
# Never wait at a password prompt or on an unreachable host.
export PGCONNECT_TIMEOUT=3

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_updated=""
# apt_install PKG... : installs the packages that are not installed yet.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]} and no apt-get here: install them yourself"
        return 1
    fi
    say "installing ${missing[*]}"
    if [ -z "$_apt_updated" ]; then
        as_root apt-get update -qq && _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    echo "${d:-/usr/bin}"
}

pg_answers() { # url
    psql -w "$1" -Atqc 'select 1' >/dev/null 2>&1 </dev/null
}

have() { command -v "$1" >/dev/null 2>&1; }

# Uses $DATABASE_URL when it answers, then a PostgreSQL on 127.0.0.1:5432
# with trust auth, else starts a private cluster on port 55432 (installing
# the server first if this machine has none).
ensure_postgres() {
    have psql || apt_install postgresql-client
    local admin
    if [ -n "${DATABASE_URL:-}" ] && pg_answers "$DATABASE_URL"; then
        admin="$DATABASE_URL"
    elif pg_answers "postgres://postgres@127.0.0.1:5432/postgres"; then
        admin="postgres://postgres@127.0.0.1:5432/postgres"
    else
        # As root the server runs as the postgres user, who may not reach a
        # checkout under /root: keep its files in a place of its own.
        local data="$MAGE_STATE_DIR/pg" port=55432
        if [ "$(id -u)" -eq 0 ]; then data="${MAGE_PG_DIR:-/var/lib/mage/pg}"; fi
        admin="postgres://postgres@127.0.0.1:$port/postgres"
        if ! pg_answers "$admin"; then
            [ -x "$(pg_bin)/initdb" ] || apt_install postgresql
            say "no PostgreSQL answers: starting a private one on 127.0.0.1:$port ($data)"
            local run=()
            if [ "$(id -u)" -eq 0 ]; then run=(runuser -u postgres --); fi
            if [ ! -f "$data/PG_VERSION" ]; then
                mkdir -p "$data"
                if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$data"; fi
                chmod 700 "$data"
                "${run[@]}" "$(pg_bin)/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
            fi
            if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$data"; fi
            "${run[@]}" "$(pg_bin)/pg_ctl" -D "$data" -l "$data/server.log" -w \
                -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
        fi
    fi
    export MAGE_TEST_DATABASE_URL="${MAGE_TEST_DATABASE_URL:-$admin}"
    if [ -z "${DATABASE_URL:-}" ] || ! pg_answers "$DATABASE_URL"; then
        local base="${admin%/*}"
        psql -w "$admin" -Atqc "select 1 from pg_database where datname = 'mage'" | grep -q 1 \
            || psql -w "$admin" -qc 'CREATE DATABASE mage' >/dev/null
        export DATABASE_URL="$base/mage"
    fi
}

# Uses $REDIS_URL when it answers, then 127.0.0.1:6379, else starts a private
# Redis on port 56379.
ensure_redis() {
    have redis-cli || apt_install redis-tools
    redis_answers() { redis-cli -u "$1" ping 2>/dev/null | grep -q PONG; }
    if [ -n "${REDIS_URL:-}" ] && redis_answers "$REDIS_URL"; then
        :
    elif redis_answers "redis://127.0.0.1:6379"; then
        export REDIS_URL="redis://127.0.0.1:6379"
    else
        local port=56379
        export REDIS_URL="redis://127.0.0.1:$port"
        if ! redis_answers "$REDIS_URL"; then
            have redis-server || apt_install redis-server
            say "no Redis answers: starting a private one on 127.0.0.1:$port"
            redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
                --dir "$MAGE_STATE_DIR" --logfile "$MAGE_STATE_DIR/redis.log" \
                --pidfile "$MAGE_STATE_DIR/redis.pid" >/dev/null
            for _ in $(seq 50); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
        fi
    fi
    export MAGE_TEST_REDIS_URL="${MAGE_TEST_REDIS_URL:-$REDIS_URL}"
}

ensure_rust() {
    if ! have cargo; then
        say "cargo is not installed: install Rust (https://rustup.rs) and run this again"
        exit 1
    fi
    # Crates with C parts (ring) need a C compiler.
    have cc || apt_install build-essential
}

# rustfmt and clippy, which a minimal rustup profile leaves out.
ensure_rust_lints() {
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        say "adding the rustfmt and clippy components"
        rustup component add rustfmt clippy
    fi
}

ensure_ffmpeg() {
    have ffmpeg && have ffprobe || apt_install ffmpeg
    # The synthetic renderer draws the prompt with DejaVu Sans.
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core
}

# The release build every benchmark runs against, built by one and the same
# command everywhere: cargo unifies features per command, so a narrower
# `--example X` would rebuild half the dependency tree for each benchmark.
#
# A checkout with no release build of its own (a fresh clone) builds into
# the machine's shared one, MAGE_RELEASE_CACHE (~/.cache/mage/release):
# target/release becomes a link to it. The dependencies are then built once
# per machine (15 of a fresh 2-core build's 16 minutes), and a fresh clone
# compiles only Mage's own crates. Cargo tells clones apart by their path and
# locks the directory while it builds, so clones never mix or race. The debug
# build (tests) stays in the checkout.
bench_build() {
    if [ -z "${CARGO_TARGET_DIR:-}" ] && [ ! -e target/release ] && [ ! -L target/release ]; then
        local shared="${MAGE_RELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mage/release}"
        mkdir -p "$shared" target
        ln -s "$shared" target/release
        say "release build: shared with this machine's other checkouts ($shared)"
    elif [ -L target/release ] && [ ! -e target/release ]; then
        # The shared folder was deleted (to reclaim its disk): build it anew.
        mkdir -p "$(readlink target/release)"
    fi
    say "building Mage and the benchmark drivers (release)"
    cargo build --release --bin mage --examples --workspace
}
