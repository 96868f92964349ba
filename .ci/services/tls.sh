#!/usr/bin/env bash
# TLS-enabled second instances of PostgreSQL, MariaDB and Redis for the TLS suites
# (`paas-components/tests/tls.rs`), beside the pre-started plain ones, which stay untouched.
#
# Idempotent and cached: a test CA, a second unrelated CA (for the wrong-CA cases) and a server
# certificate for `localhost` / 127.0.0.1 are made with openssl once (again only when missing
# or within a day of expiry); each instance is initialised once and started only when nothing
# listens on its port. Warm, it only probes three ports (well under a second); cold, about
# 10-20 s (initdb and mariadb-install-db). Everything lives under TLS_DIR, nothing in the repo.
# Progress goes to stderr; stdout carries only the `export` lines that `.ci/services.sh`
# appends to `.ci/env`.
#
# The instances accept TLS only: PostgreSQL through `hostssl` rules (no `host` rule), MariaDB
# with `require_secure_transport`, Redis with `--port 0` (no plain port). Credentials are
# test-only values: PostgreSQL user `postgres` with trust auth; MariaDB user `tls` with a
# password; Redis with `requirepass`.
#
# Environment (all optional): TLS_DIR (/var/lib/multicloud-ci/tls), PG_TLS_PORT (5433),
# MYSQL_TLS_PORT (3307), REDIS_TLS_PORT (6380).
set -euo pipefail

DIR="${TLS_DIR:-/var/lib/multicloud-ci/tls}"
PG_PORT="${PG_TLS_PORT:-5433}"
MY_PORT="${MYSQL_TLS_PORT:-3307}"
RD_PORT="${REDIS_TLS_PORT:-6380}"
MY_PASSWORD="tls-ci-password"
RD_PASSWORD="tls-ci-password"

log() { echo "tls.sh: $*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port
    local i
    for ((i = 0; i < 150; i++)); do
        listening "$2" && return 0
        sleep 0.2
    done
    log "$1 did not come up on 127.0.0.1:$2 within 30 s"
    return 1
}
# Stops an instance this script started, by the pid in its pid file.
stop_pidfile() {
    local pid
    [ -f "$1" ] || return 0
    pid="$(head -n 1 "$1")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
}

mkdir -p "$DIR"
chmod 755 "$DIR"

# --- Certificates ---------------------------------------------------------------------------
valid() { [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1; }
new_ca() { # name subject
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$2" \
        -keyout "$DIR/$1.key" -out "$DIR/$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
}
if ! valid "$DIR/ca.pem" || ! valid "$DIR/server.pem" || ! valid "$DIR/other-ca.pem"; then
    log "making the test CAs and the server certificate in $DIR"
    new_ca ca "multicloud-ci test CA"
    new_ca other-ca "multicloud-ci unrelated CA"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$DIR/server.key" -out "$DIR/server.csr" >/dev/null 2>&1
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" >"$DIR/server.ext"
    openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
        -CAcreateserial -days 825 -extfile "$DIR/server.ext" -out "$DIR/server.pem" \
        >/dev/null 2>&1
    rm -f "$DIR/server.csr"
    chmod 644 "$DIR/ca.pem" "$DIR/other-ca.pem" "$DIR/server.pem"
    chmod 600 "$DIR/ca.key" "$DIR/other-ca.key" "$DIR/server.key"
    # Running instances hold the old certificate: restart them below.
    stop_pidfile "$DIR/pg/data/postmaster.pid"
    stop_pidfile "$DIR/mariadb-tls/mariadb.pid"
    stop_pidfile "$DIR/redis/redis.pid"
fi

# Each server reads its own copy of the key, owned by the user it runs as (PostgreSQL
# refuses a key that others can read).
install_key() { # user dest-dir
    install -d -o "$1" -m 700 "$2"
    install -o "$1" -m 600 "$DIR/server.key" "$2/server.key"
    install -o "$1" -m 644 "$DIR/server.pem" "$2/server.pem"
}

# --- PostgreSQL -----------------------------------------------------------------------------
PG_BIN="/usr/lib/postgresql/$(ls /etc/postgresql | sort -V | tail -n 1)/bin"
if ! listening "$PG_PORT"; then
    install_key postgres "$DIR/pg"
    if [ ! -s "$DIR/pg/data/PG_VERSION" ]; then
        log "initialising the PostgreSQL TLS cluster in $DIR/pg/data"
        rm -rf "$DIR/pg/data"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/pg/data" -U postgres \
            --auth=trust >"$DIR/pg/initdb.log" 2>&1
        # TLS connections only: no `host` (plain TCP) rule.
        printf '%s\n' "local all all trust" "hostssl all all 127.0.0.1/32 trust" \
            >"$DIR/pg/data/pg_hba.conf"
    fi
    log "starting PostgreSQL with TLS on 127.0.0.1:$PG_PORT"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/server.log" -w \
        -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DIR/pg \
            -c ssl=on -c ssl_cert_file=$DIR/pg/server.pem -c ssl_key_file=$DIR/pg/server.key \
            -c fsync=off" start >/dev/null
    wait_port postgresql-tls "$PG_PORT"
    if ! runuser -u postgres -- "$PG_BIN/psql" -h "$DIR/pg" -p "$PG_PORT" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
        runuser -u postgres -- "$PG_BIN/createdb" -h "$DIR/pg" -p "$PG_PORT" -U postgres test
    fi
fi
log "postgresql-tls is up on 127.0.0.1:$PG_PORT"

# --- MariaDB --------------------------------------------------------------------------------
if ! listening "$MY_PORT"; then
    install_key mysql "$DIR/mariadb-tls"
    if [ ! -d "$DIR/mariadb/mysql" ]; then
        log "initialising the MariaDB TLS datadir in $DIR/mariadb"
        rm -rf "$DIR/mariadb"
        install -d -o mysql -m 700 "$DIR/mariadb"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mariadb" \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$DIR/mariadb-install.log" 2>&1
    fi
    log "starting MariaDB with TLS on 127.0.0.1:$MY_PORT"
    nohup mariadbd --no-defaults --user=mysql --datadir="$DIR/mariadb" \
        --port="$MY_PORT" --bind-address=127.0.0.1 --socket="$DIR/mariadb-tls/mariadb.sock" \
        --pid-file="$DIR/mariadb-tls/mariadb.pid" --log-error="$DIR/mariadb-tls/server.log" \
        --ssl-cert="$DIR/mariadb-tls/server.pem" --ssl-key="$DIR/mariadb-tls/server.key" \
        --ssl-ca="$DIR/ca.pem" --require-secure-transport=ON \
        --innodb-flush-log-at-trx-commit=0 --skip-name-resolve >/dev/null 2>&1 &
    wait_port mariadb-tls "$MY_PORT"
    mariadb --no-defaults -S "$DIR/mariadb-tls/mariadb.sock" -u root -e "
        CREATE DATABASE IF NOT EXISTS test;
        CREATE USER IF NOT EXISTS 'tls'@'%' IDENTIFIED BY '$MY_PASSWORD' REQUIRE SSL;
        GRANT ALL ON test.* TO 'tls'@'%';"
fi
log "mariadb-tls is up on 127.0.0.1:$MY_PORT"

# --- Redis ----------------------------------------------------------------------------------
if ! listening "$RD_PORT"; then
    install_key redis "$DIR/redis"
    log "starting Redis with TLS on 127.0.0.1:$RD_PORT"
    runuser -u redis -- redis-server --daemonize yes --bind 127.0.0.1 --port 0 \
        --tls-port "$RD_PORT" --tls-cert-file "$DIR/redis/server.pem" \
        --tls-key-file "$DIR/redis/server.key" --tls-ca-cert-file "$DIR/ca.pem" \
        --tls-auth-clients no --requirepass "$RD_PASSWORD" --save "" --appendonly no \
        --dir "$DIR/redis" --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/server.log"
    wait_port redis-tls "$RD_PORT"
fi
log "redis-tls is up on 127.0.0.1:$RD_PORT"

echo "export TLS_TEST_CA_FILE=$DIR/ca.pem"
echo "export TLS_TEST_OTHER_CA_FILE=$DIR/other-ca.pem"
echo "export POSTGRES_TLS_TEST_URL='postgres://postgres@127.0.0.1:$PG_PORT/test?sslmode=verify-full&sslrootcert=$DIR/ca.pem'"
echo "export MYSQL_TLS_TEST_URL='mysql://tls:$MY_PASSWORD@127.0.0.1:$MY_PORT/test?ssl-mode=VERIFY_IDENTITY&ssl-ca=$DIR/ca.pem'"
echo "export REDIS_TLS_TEST_URL='rediss://:$RD_PASSWORD@127.0.0.1:$RD_PORT/0?ca_file=$DIR/ca.pem'"
