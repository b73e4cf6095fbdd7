# Sourced by scripts/test: makes sure a RabbitMQ server answers on
# 127.0.0.1:5672, installing Debian's rabbitmq-server and starting it when
# absent, reusing one that already runs.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_rabbitmq() {
  if port_open 5672; then
    echo "RabbitMQ: already listening on 127.0.0.1:5672, reusing it"
    return 0
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "scripts/test: RabbitMQ is not installed and this user cannot install it (run as root, or start a RabbitMQ on 127.0.0.1:5672)" >&2
      return 1
    fi
    echo "RabbitMQ: installing Debian's rabbitmq-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  echo "RabbitMQ: starting"
  # Debian's package may not start it (no init system here): start it directly.
  rabbitmq-server -detached
  # await_startup fails at once while the node is not reachable yet: retry.
  local deadline=$((SECONDS + 180))
  until rabbitmqctl await_startup >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "scripts/test: RabbitMQ did not finish starting within 180 s; its log:" >&2
      tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
      return 1
    fi
    sleep 2
  done
  for _ in $(seq 1 60); do
    port_open 5672 && { echo "RabbitMQ: up on 127.0.0.1:5672 ($(rabbitmqctl version 2>/dev/null))"; return 0; }
    sleep 1
  done
  echo "scripts/test: RabbitMQ started but 127.0.0.1:5672 does not answer" >&2
  return 1
}
