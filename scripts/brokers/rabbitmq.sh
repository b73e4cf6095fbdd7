# Sourced by scripts/test: makes sure a RabbitMQ server answers on
# 127.0.0.1:5672 (AMQP) and 127.0.0.1:5671 (AMQP over TLS, with a test CA
# whose certificate is exported as $AMQP_TLS_CA), installing Debian's
# rabbitmq-server and starting it when absent, reusing one that already runs.
# Run as a command, the file stops and starts the node, for the
# fault-injection tests:
#
#   scripts/brokers/rabbitmq.sh stop    shut the node down (the server process exits)
#   scripts/brokers/rabbitmq.sh start   start it again and wait until it answers

RABBITMQ_TLS_DIR=/etc/rabbitmq/sluicegate-tls

# A test CA and a server certificate for 127.0.0.1, and a rabbitmq.conf
# with a TLS listener on 5671 (written only when there is none, or ours).
rabbitmq_tls_setup() {
  local dir=$RABBITMQ_TLS_DIR conf=/etc/rabbitmq/rabbitmq.conf
  if [ -f "$conf" ] && ! grep -q "sluicegate-tls" "$conf"; then
    echo "scripts/test: $conf exists and is not ours; add a TLS listener on 5671 using $dir, or remove it" >&2
    return 1
  fi
  mkdir -p "$dir"
  if [ ! -f "$dir/server.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=sluicegate-test-ca \
      -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1 &&
      openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
        -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1 &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext" &&
      openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 3650 -extfile "$dir/san.ext" -out "$dir/server.pem" >/dev/null 2>&1 || {
      echo "scripts/test: making RabbitMQ's test certificates with openssl failed" >&2
      return 1
    }
    chmod 644 "$dir"/*
  fi
  cat >"$conf" <<EOF
# Written by sluicegate's scripts/test (sluicegate-tls): a TLS listener for the tests.
listeners.ssl.default = 5671
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
# RabbitMQ 4's default (3.x allows 128 MiB): the hostile-input tests send a
# body close to it.
max_message_size = 16777216
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_rabbitmq() {
  export AMQP_TLS_CA="$RABBITMQ_TLS_DIR/ca.pem"
  if port_open 5672; then
    if port_open 5671 && [ -f "$AMQP_TLS_CA" ] && grep -q max_message_size /etc/rabbitmq/rabbitmq.conf 2>/dev/null; then
      echo "RabbitMQ: already listening on 127.0.0.1:5672 and :5671 (TLS), reusing it"
      return 0
    fi
    # Running without the TLS listener (a package that started it on
    # install, say): restart the local node with it, if it is ours to manage.
    if command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl status >/dev/null 2>&1; then
      echo "RabbitMQ: running without this script's configuration (TLS listener, message size); restarting the local node with it"
      rabbitmqctl shutdown >/dev/null 2>&1 || true
      for _ in $(seq 1 30); do port_open 5672 || break; sleep 1; done
    else
      echo "scripts/test: a RabbitMQ on 127.0.0.1:5672 runs without this script's TLS listener on 5671, and rabbitmqctl cannot manage it; stop it and run again" >&2
      return 1
    fi
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
  rabbitmq_tls_setup || return 1
  rabbitmq_start
}

# Starts the node (its queues and persistent messages come back from its
# data directory) and waits until it answers on both ports.
rabbitmq_start() {
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
    sleep 0.5
  done
  for _ in $(seq 1 60); do
    port_open 5672 && port_open 5671 && {
      echo "RabbitMQ: up on 127.0.0.1:5672 and :5671 (TLS) ($(rabbitmqctl version 2>/dev/null))"
      return 0
    }
    sleep 1
  done
  echo "scripts/test: RabbitMQ started but 127.0.0.1:5672 or :5671 (TLS) does not answer" >&2
  tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
  return 1
}

# Shuts the node down and waits until the server process is gone.
rabbitmq_stop() {
  rabbitmqctl shutdown >/dev/null 2>&1 || {
    echo "scripts/brokers/rabbitmq.sh: rabbitmqctl shutdown failed (is the node running?)" >&2
    return 1
  }
  for _ in $(seq 1 100); do port_open 5672 || break; sleep 0.1; done
  echo "RabbitMQ: stopped"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    stop) rabbitmq_stop ;;
    start) rabbitmq_start ;;
    *) echo "usage: $0 stop|start" >&2; exit 2 ;;
  esac
fi
