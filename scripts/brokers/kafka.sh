# Sourced by scripts/test: makes sure an Apache Kafka broker answers on
# 127.0.0.1:9092 (PLAINTEXT) and 127.0.0.1:9094 (SASL_SSL: TLS with a
# self-signed certificate, SCRAM-SHA-256 user `sluicegate`, password
# `sluicegate-secret`; its CA in $KAFKA_TLS_CA, exported for the tests).
# Reuses one that already listens; otherwise fetches Apache
# Kafka's jars from Maven Central (org.apache.kafka:kafka_2.13 and its
# runtime dependencies, cached under $SLUICEGATE_CACHE) and starts a single
# KRaft node (broker and controller in one JVM) on the machine's Java.
# No Docker, no tarball from the Apache mirrors: only Maven Central.
#
# A broker that stopped (crashed, killed) starts again from its data
# directory, with its topics and committed offsets; only a directory that
# does not start is formatted afresh. Run as a command, the file kills and
# restarts the broker, for the fault-injection tests:
#
#   scripts/brokers/kafka.sh kill    SIGKILL the broker, wait until it is gone
#   scripts/brokers/kafka.sh start   start it again from its data directory

KAFKA_VERSION="${KAFKA_VERSION:-3.9.0}"
SLUICEGATE_CACHE="${SLUICEGATE_CACHE:-$HOME/.cache/sluicegate}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Downloads the broker's jars once; later runs reuse them.
kafka_fetch_jars() {
  local home="$1"
  if [ -f "$home/libs/.complete" ]; then
    return 0
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    echo "scripts/test: Kafka's jars are not cached and Maven (mvn) is not installed" >&2
    return 1
  fi
  echo "Kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies from Maven Central"
  mkdir -p "$home"
  cat >"$home/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluicegate</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$home/libs"
  if ! mvn -q -B -f "$home/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$home/libs" >"$home/mvn.log" 2>&1; then
    echo "scripts/test: Maven could not fetch Kafka $KAFKA_VERSION; its log:" >&2
    tail -n 30 "$home/mvn.log" >&2
    return 1
  fi
  touch "$home/libs/.complete"
  echo "Kafka: $(ls "$home/libs" | wc -l) jars cached in $home/libs"
}

kafka_home() { echo "$SLUICEGATE_CACHE/kafka-$KAFKA_VERSION"; }

ensure_kafka() {
  local home
  home=$(kafka_home)
  export KAFKA_TLS_CA="$home/run/ca.pem"
  if port_open 9092; then
    if ! port_open 9094 || [ ! -f "$KAFKA_TLS_CA" ]; then
      echo "scripts/test: a Kafka on 127.0.0.1:9092 runs without this script's SASL_SSL listener on 9094; stop it and run again" >&2
      return 1
    fi
    echo "Kafka: already listening on 127.0.0.1:9092 and :9094, reusing it"
    return 0
  fi
  if ! command -v java >/dev/null 2>&1; then
    echo "scripts/test: Kafka needs Java (17 or newer), and java is not on PATH" >&2
    return 1
  fi
  kafka_fetch_jars "$home" || return 1
  if [ -f "$home/run/logs/meta.properties" ] && [ -f "$home/run/broker.p12" ]; then
    echo "Kafka: starting again from its data directory ($home/run)"
    kafka_start && return 0
    echo "Kafka: its data directory did not start; formatting a fresh one"
  fi
  kafka_format "$home/run" || return 1
  kafka_start
}

# A fresh data directory: a self-signed certificate for 127.0.0.1 (its own
# CA, exported to $KAFKA_TLS_CA), the SCRAM user, a new cluster id.
kafka_format() {
  local data="$1" secret=sluicegate-secret cp
  cp="$(kafka_home)/libs/*"
  rm -rf "$data"
  mkdir -p "$data/logs"
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
    -dname CN=127.0.0.1 -ext SAN=IP:127.0.0.1,DNS:localhost \
    -keystore "$data/broker.p12" -storetype PKCS12 -storepass "$secret" -keypass "$secret" \
    >"$data/keytool.log" 2>&1 &&
    keytool -exportcert -rfc -alias broker -keystore "$data/broker.p12" -storepass "$secret" \
      -file "$data/ca.pem" >>"$data/keytool.log" 2>&1 || {
    echo "scripts/test: making Kafka's TLS certificate failed:" >&2
    cat "$data/keytool.log" >&2
    return 1
  }
  kafka_write_config "$data"
  java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
    -c "$data/server.properties" --add-scram "SCRAM-SHA-256=[name=sluicegate,password=$secret]" \
    >"$data/format.log" 2>&1 || {
    echo "scripts/test: formatting Kafka's log directory failed:" >&2
    cat "$data/format.log" >&2
    return 1
  }
}

# The broker's configuration, written on every start so a data directory
# from an older script runs with the current settings.
kafka_write_config() {
  local data="$1" secret=sluicegate-secret
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,SASL_SSL://127.0.0.1:9094
advertised.listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.location=$data/broker.p12
ssl.keystore.type=PKCS12
ssl.keystore.password=$secret
ssl.key.password=$secret
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$data/log4j.properties" <<EOF
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$data/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
EOF
}

# Starts the broker on its data directory and waits for both listeners.
kafka_start() {
  local home data cp
  home=$(kafka_home)
  data="$home/run"
  cp="$home/libs/*"
  export KAFKA_TLS_CA="$data/ca.pem"
  kafka_write_config "$data"
  echo "Kafka: starting $KAFKA_VERSION (KRaft, one node) on 127.0.0.1:9092"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC \
    -Dlog4j.configuration="file:$data/log4j.properties" \
    -cp "$cp" kafka.Kafka "$data/server.properties" >"$data/stdout.log" 2>&1 &
  echo $! >"$data/pid"
  local deadline=$((SECONDS + 120)) port
  for port in 9092 9094; do
    until port_open "$port"; do
      if ! kill -0 "$(cat "$data/pid")" 2>/dev/null; then
        echo "scripts/test: Kafka exited while starting; its output:" >&2
        tail -n 40 "$data/stdout.log" "$data/server.log" >&2 2>/dev/null || true
        return 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "scripts/test: Kafka did not listen on 127.0.0.1:$port within 120 s; its log:" >&2
        tail -n 40 "$data/server.log" >&2 2>/dev/null || true
        return 1
      fi
      sleep 0.2
    done
  done
  echo "Kafka: up on 127.0.0.1:9092 and SASL_SSL :9094 (pid $(cat "$data/pid"), logs in $data)"
}

# SIGKILL, as a crash would: no controlled shutdown, nothing flushed.
kafka_kill() {
  local pidfile
  pidfile="$(kafka_home)/run/pid"
  if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "scripts/brokers/kafka.sh: no broker started by this script is running" >&2
    return 1
  fi
  kill -KILL "$(cat "$pidfile")"
  while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.05; done
  echo "Kafka: killed (SIGKILL)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    kill) kafka_kill ;;
    start) kafka_start ;;
    *) echo "usage: $0 kill|start" >&2; exit 2 ;;
  esac
fi
