#!/usr/bin/env bash
# Makes sure every server the test suites need is up, starting (and, where needed, installing)
# what is not, then writes the URLs the suites read to .ci/env (sourced by .ci/test.sh).
# Idempotent: safe to run again while everything is already up.
set -euo pipefail
cd "$(dirname "$0")/.."

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 5; i++)); do
    listening "$2" "$3" && return 0
    sleep 0.2
  done
  echo "services: $1 did not come up on $2:$3 within $4 s" >&2
  return 1
}

ensure() { # name host port start-command...
  local name=$1 host=$2 port=$3
  shift 3
  if listening "$host" "$port"; then
    echo "services: $name is up on $host:$port"
    return 0
  fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_for "$name" "$host" "$port" 60
  echo "services: $name started on $host:$port"
}

ensure postgresql 127.0.0.1 5432 \
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
ensure mariadb 127.0.0.1 3306 \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
ensure mosquitto 127.0.0.1 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf
ensure redis 127.0.0.1 6379 \
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log
ensure rabbitmq 127.0.0.1 5672 rabbitmq-server -detached
ensure nats 127.0.0.1 4222 \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log

env_file=.ci/env
{
  echo "export POSTGRES_TEST_URL=\${POSTGRES_TEST_URL:-postgres://postgres@127.0.0.1:5432/test}"
  echo "export MYSQL_TEST_URL=\${MYSQL_TEST_URL:-mysql://root@127.0.0.1:3306/test}"
  echo "export REDIS_TEST_URL=\${REDIS_TEST_URL:-redis://127.0.0.1:6379/0}"
  echo "export MQTT_TEST_URL=\${MQTT_TEST_URL:-mqtt://127.0.0.1:1883}"
  echo "export RABBITMQ_TEST_URL=\${RABBITMQ_TEST_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  echo "export NATS_TEST_URL=\${NATS_TEST_URL:-nats://127.0.0.1:4222}"
} >"$env_file"

# Servers that are not pre-installed: each script installs (cached), starts, and prints its
# export lines.
for script in .ci/services/*.sh; do
  [ -e "$script" ] || continue
  bash "$script" >>"$env_file"
done
echo "services: URLs written to $env_file"
