# Sourced by scripts/test: makes sure an Apache Kafka broker answers on
# 127.0.0.1:9092 (PLAINTEXT) and 127.0.0.1:9094 (SASL_SSL: TLS with a
# self-signed certificate, SCRAM-SHA-256 user `sluicegate`, password
# `sluicegate-secret`; its CA in $KAFKA_TLS_CA, exported for the tests).
# Reuses one that already listens; otherwise fetches Apache
# Kafka's jars from Maven Central (org.apache.kafka:kafka_2.13 and its
# runtime dependencies, cached under $SLUICEGATE_CACHE) and starts a single
# KRaft node (broker and controller in one JVM) on the machine's Java.
# No Docker, no tarball from the Apache mirrors: only Maven Central.

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

ensure_kafka() {
  local home="$SLUICEGATE_CACHE/kafka-$KAFKA_VERSION"
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

  # A fresh log directory per start: tests make their own topics.
  local data="$home/run"
  rm -rf "$data"
  mkdir -p "$data/logs"
  # A self-signed certificate for 127.0.0.1, which is its own CA.
  local secret=sluicegate-secret
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
    -dname CN=127.0.0.1 -ext SAN=IP:127.0.0.1,DNS:localhost \
    -keystore "$data/broker.p12" -storetype PKCS12 -storepass "$secret" -keypass "$secret" \
    >"$data/keytool.log" 2>&1 &&
    keytool -exportcert -rfc -alias broker -keystore "$data/broker.p12" -storepass "$secret" \
      -file "$KAFKA_TLS_CA" >>"$data/keytool.log" 2>&1 || {
    echo "scripts/test: making Kafka's TLS certificate failed:" >&2
    cat "$data/keytool.log" >&2
    return 1
  }
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
  local cp="$home/libs/*"
  java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
    -c "$data/server.properties" --add-scram "SCRAM-SHA-256=[name=sluicegate,password=$secret]" \
    >"$data/format.log" 2>&1 || {
    echo "scripts/test: formatting Kafka's log directory failed:" >&2
    cat "$data/format.log" >&2
    return 1
  }
  echo "Kafka: starting $KAFKA_VERSION (KRaft, one node) on 127.0.0.1:9092"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC \
    -Dlog4j.configuration="file:$data/log4j.properties" \
    -cp "$cp" kafka.Kafka "$data/server.properties" >"$data/stdout.log" 2>&1 &
  echo $! >"$data/pid"
  local deadline=$((SECONDS + 120))
  until port_open 9092; do
    if ! kill -0 "$(cat "$data/pid")" 2>/dev/null; then
      echo "scripts/test: Kafka exited while starting; its output:" >&2
      tail -n 40 "$data/stdout.log" "$data/server.log" >&2 2>/dev/null || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "scripts/test: Kafka did not listen on 127.0.0.1:9092 within 120 s; its log:" >&2
      tail -n 40 "$data/server.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 1
  done
  until port_open 9094; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "scripts/test: Kafka's SASL_SSL listener did not open 127.0.0.1:9094 within 120 s; its log:" >&2
      tail -n 40 "$data/server.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 1
  done
  echo "Kafka: up on 127.0.0.1:9092 and SASL_SSL :9094 (pid $(cat "$data/pid"), logs in $data)"
}
