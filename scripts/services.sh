#!/usr/bin/env bash
# Installs (if missing) and runs the services idempipe needs, on loopback only:
#   Kafka: Apache Kafka (scripts/kafka.sh, jars from Maven Central pinned by
#       scripts/kafka/pom.xml): a KRaft controller on KAFKA_PORT+1 and two brokers on
#       KAFKA_PORT (9092) and KAFKA_PORT+2, topics with 4 partitions and 2 replicas; with
#       KAFKA_IMPL=tansu, tansu 0.6.0 instead (one process on KAFKA_PORT; a compatibility
#       target only, compiled from crates.io on first use)
#   ClickHouse (Debian's clickhouse-server) with HTTP on 127.0.0.1:8123
#   S3: moto in server mode on 127.0.0.1:9300 (it honours conditional writes, which Delta's
#       commits need), bucket `idempipe`; from PyPI into the project's virtual environment
# Usage: scripts/services.sh up|down|status|restart-kafka|kafka-down|kafka-up|kafka-fresh|kafka-install|kafka-stop-broker N|kafka-start-broker N|kafka-stop-controller|kafka-start-controller|clickhouse-up|clickhouse-down|s3-up|s3-down|build-deps
#   up              starts Kafka, ClickHouse and the S3 server (each installed if missing; one
#                   that answers is left alone, but a tansu on another storage is replaced),
#                   then prints `status`
#   down            stops Kafka (and stunnel), ClickHouse and the S3 server (those whose pid
#                   file is in SERVICES_DIR)
#   status          prints whether each of the three answers; exits non-zero unless all do
#   restart-kafka   stops Kafka and starts it again on the same storage
#   kafka-down      stops Kafka (with tansu, stunnel, if running, stays)
#   kafka-up        starts Kafka on its storage (installed if missing)
#   kafka-fresh     (re)starts Kafka on empty storage (Apache: a new cluster; tansu: stops
#                   stunnel and any tansu on KAFKA_PORT, deletes SERVICES_DIR/tansu.db*)
#   kafka-install   installs Kafka only (Apache's jars, or tansu from crates.io)
#   kafka-stop-broker N, kafka-start-broker N, kafka-stop-controller, kafka-start-controller
#                   Apache Kafka only: stops or starts broker N (1 or 2; KILL=1 kills it) or
#                   the controller, for failover
#   clickhouse-up   starts ClickHouse alone (installed if missing); clickhouse-down stops it
#   s3-up           starts the S3 server alone (installed if missing; makes the bucket);
#                   s3-down stops it
#   build-deps      installs what the build needs beyond Rust: OpenSSL's headers and pkg-config
#                   (librdkafka's TLS and SASL/SCRAM), from Debian's packages
# Environment:
#   KAFKA_IMPL      apache (default) or tansu
#   KAFKA_PORT      the (first) broker's port (default 9092); Apache Kafka's other settings
#                   (the other ports, TLS, SCRAM, timeouts) are scripts/kafka.sh's
#   TANSU_STORAGE   tansu storage URL (default sqlite://tansu.db, under SERVICES_DIR; not memory://,
#                   whose fetch cannot resume inside a stored batch: see docs/OPERATIONS.md, Services)
#   TANSU_BIN       the tansu binary (default ~/.cargo/bin/tansu, installed there from
#                   crates.io when missing)
#   SERVICES_DIR    where data, logs and pid files live (default: data/services in the checkout)
#   S3_PORT         the S3 server's port (default 9300)
#   IDEMPIPE_VENV   the virtual environment moto is installed into (default data/venv:
#                   scripts/pyenv.sh)
#   KAFKA_TLS_PORT, KAFKA_TLS_CERT, KAFKA_TLS_KEY   tansu: with all three, tansu (which has no
#                   TLS of its own) is reached over TLS only: stunnel (Debian's stunnel4) on
#                   that port with that certificate in front of it, and tansu advertises that
#                   port. Apache Kafka: see scripts/kafka.sh (its own TLS listeners)
#   KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD   with both, the brokers require SASL/SCRAM-SHA-512
#                   authentication and that user is created first
#   CLICKHOUSE_HTTPS_PORT, CLICKHOUSE_TLS_CERT, CLICKHOUSE_TLS_KEY   with all three, a
#                   private ClickHouse also serves HTTPS on that port with that certificate
#   CLICKHOUSE_HTTP_PORT, CLICKHOUSE_TCP_PORT   ClickHouse ports (default 8123, 9000); with
#                   its own SERVICES_DIR, `clickhouse-up` starts a private server (tests
#                   that stop ClickHouse use one, so other tests keep theirs)
# Running `up` twice is harmless: a service that answers is left alone.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SERVICES_DIR:-$root/data/services}
tansu_bin=${TANSU_BIN:-$HOME/.cargo/bin/tansu}
storage=${TANSU_STORAGE:-sqlite://tansu.db}
kafka_port=${KAFKA_PORT:-9092}
kafka_impl=${KAFKA_IMPL:-apache}
[[ $kafka_impl == apache || $kafka_impl == tansu ]] \
  || { echo "services: KAFKA_IMPL must be apache or tansu, not '$kafka_impl'" >&2; exit 2; }
ch_http_port=${CLICKHOUSE_HTTP_PORT:-8123}
ch_tcp_port=${CLICKHOUSE_TCP_PORT:-9000}
s3_port=${S3_PORT:-9300}
mkdir -p "$dir"

log() { echo "services: $*" >&2; }

install_tansu() {
  if [[ -x $tansu_bin ]]; then return; fi
  log "installing tansu 0.6.0 from crates.io (15 to 30 minutes, once per machine)"
  cargo install tansu --locked --version 0.6.0 --features dynostore,libsql >"$dir/tansu-install.log" 2>&1 \
    || { tail -30 "$dir/tansu-install.log" >&2; log "tansu install failed (log: $dir/tansu-install.log)"; exit 1; }
}

install_clickhouse() {
  if [[ -x /usr/sbin/clickhouse-server ]]; then return; fi
  log "installing clickhouse-server from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq clickhouse-server clickhouse-client >"$dir/clickhouse-install.log" 2>&1 \
    || { tail -30 "$dir/clickhouse-install.log" >&2; log "clickhouse install failed"; exit 1; }
}

install_build_deps() {
  if pkg-config --exists openssl 2>/dev/null; then return; fi
  log "installing libssl-dev and pkg-config from Debian's packages (librdkafka's TLS)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq libssl-dev pkg-config >"$dir/build-deps-install.log" 2>&1 \
    || { tail -30 "$dir/build-deps-install.log" >&2; log "libssl-dev install failed"; exit 1; }
}

s3_up() { curl -fsS -o /dev/null "http://127.0.0.1:$s3_port/moto-api/" 2>/dev/null; }

start_s3() {
  if s3_up; then log "s3 already answers on 127.0.0.1:$s3_port"; return; fi
  # shellcheck source=scripts/pyenv.sh
  source "$root/scripts/pyenv.sh"
  pyenv_ready 'moto.server=moto[server]>=5'
  log "starting moto (S3) on 127.0.0.1:$s3_port"
  setsid nohup "$(dirname "$IDEMPIPE_PYTHON")/moto_server" -H 127.0.0.1 -p "$s3_port" >"$dir/s3.log" 2>&1 </dev/null &
  echo $! >"$dir/s3.pid"
  wait_for s3 s3_up 60
  # The bucket the tests and the demo use (creating it again is harmless).
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$s3_port/idempipe"
}

kafka_up() { (exec 3<>"/dev/tcp/127.0.0.1/$kafka_port") 2>/dev/null; }
clickhouse_up() { [[ $(curl -fsS "http://127.0.0.1:$ch_http_port/ping" 2>/dev/null) == "Ok." ]]; }

wait_for() { # name, check, seconds
  local name=$1 check=$2 deadline=$((SECONDS + $3))
  until $check; do
    if ((SECONDS > deadline)); then log "$name did not answer in $3 s; see $dir/$name.log"; tail -20 "$dir/$name.log" >&2 || true; exit 1; fi
    sleep 0.3
  done
}

# The storage engine of a tansu already serving our port (empty if none, or not tansu).
running_tansu_storage() {
  local pid
  for pid in $(pgrep -f "tansu broker --listener-url tcp://127.0.0.1:$kafka_port" 2>/dev/null); do
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- --storage-engine | tail -1
    return
  done
}

start_tansu() {
  if kafka_up; then
    local running; running=$(running_tansu_storage)
    if [[ -z $running || $running == "$storage" ]]; then
      log "kafka already answers on 127.0.0.1:$kafka_port${running:+ (tansu, $running)}"
      return
    fi
    # A broker on the wrong storage (memory:// loses data on resume) would make the
    # tests fail for reasons that are not ours: replace it.
    log "a tansu on $running answers on :$kafka_port; replacing it with one on $storage"
    pkill -f "tansu broker --listener-url tcp://127.0.0.1:$kafka_port" || true
    for _ in $(seq 50); do kafka_up || break; sleep 0.2; done
  fi
  install_tansu
  local advertised=$kafka_port auth=()
  if [[ -n ${KAFKA_TLS_PORT:-} && -n ${KAFKA_TLS_CERT:-} && -n ${KAFKA_TLS_KEY:-} ]]; then
    advertised=$KAFKA_TLS_PORT
  fi
  if [[ -n ${KAFKA_SCRAM_USER:-} && -n ${KAFKA_SCRAM_PASSWORD:-} ]]; then
    # `tansu user create` speaks no SASL itself: the user goes in before authentication
    # is switched on (durable storage keeps it).
    launch_tansu "$advertised"
    "$tansu_bin" user create --broker "tcp://127.0.0.1:$kafka_port" --mechanism scram512 \
      "$KAFKA_SCRAM_USER" "$KAFKA_SCRAM_PASSWORD" >>"$dir/tansu.log" 2>&1
    stop tansu
    for _ in $(seq 50); do kafka_up || break; sleep 0.2; done
    auth=(--authentication)
  fi
  launch_tansu "$advertised" "${auth[@]}"
  if [[ $advertised != "$kafka_port" ]]; then start_kafka_tls; fi
}

launch_tansu() { # advertised port, extra flags...
  local advertised=$1; shift
  log "starting tansu ($storage${*:+, $*})"
  # Started in $dir, so a relative sqlite://NAME.db lands there.
  setsid nohup env -C "$dir" "$tansu_bin" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$advertised" \
    --storage-engine "$storage" "$@" >>"$dir/tansu.log" 2>&1 </dev/null &
  echo $! >"$dir/tansu.pid"
  wait_for tansu kafka_up 60
}

kafka_tls_up() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_TLS_PORT") 2>/dev/null; }

# stunnel: TLS on KAFKA_TLS_PORT, plain to tansu.
start_kafka_tls() {
  if kafka_tls_up; then log "kafka TLS already answers on 127.0.0.1:$KAFKA_TLS_PORT"; return; fi
  if ! command -v stunnel4 >/dev/null 2>&1; then
    log "installing stunnel4 from Debian's packages (TLS in front of tansu)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >"$dir/stunnel-install.log" 2>&1 \
      || { tail -30 "$dir/stunnel-install.log" >&2; log "stunnel4 install failed"; exit 1; }
  fi
  cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
output = $dir/stunnel.log
[kafka]
accept = 127.0.0.1:$KAFKA_TLS_PORT
connect = 127.0.0.1:$kafka_port
cert = $KAFKA_TLS_CERT
key = $KAFKA_TLS_KEY
CONF
  log "starting stunnel (kafka TLS on 127.0.0.1:$KAFKA_TLS_PORT)"
  setsid nohup stunnel4 "$dir/stunnel.conf" >>"$dir/stunnel.log" 2>&1 </dev/null &
  echo $! >"$dir/stunnel.pid"
  wait_for stunnel kafka_tls_up 30
}

start_clickhouse() {
  if clickhouse_up; then log "clickhouse already answers on 127.0.0.1:$ch_http_port"; return; fi
  install_clickhouse
  local ch=$dir/clickhouse tls=""
  mkdir -p "$ch/data" "$ch/tmp" "$ch/user_files" "$ch/format_schemas" "$ch/log"
  if [[ -n ${CLICKHOUSE_HTTPS_PORT:-} && -n ${CLICKHOUSE_TLS_CERT:-} && -n ${CLICKHOUSE_TLS_KEY:-} ]]; then
    tls="<https_port>$CLICKHOUSE_HTTPS_PORT</https_port>
    <openSSL><server>
        <certificateFile>$CLICKHOUSE_TLS_CERT</certificateFile>
        <privateKeyFile>$CLICKHOUSE_TLS_KEY</privateKeyFile>
        <verificationMode>none</verificationMode>
        <loadDefaultCAFile>false</loadDefaultCAFile>
        <cacheSessions>true</cacheSessions>
        <disableProtocols>sslv2,sslv3</disableProtocols>
        <preferServerCiphers>true</preferServerCiphers>
    </server></openSSL>"
  fi
  cat >"$ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$ch/log/server.log</log>
        <errorlog>$ch/log/error.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$ch_http_port</http_port>
    <tcp_port>$ch_tcp_port</tcp_port>
    $tls
    <listen_host>127.0.0.1</listen_host>
    <path>$ch/data/</path>
    <tmp_path>$ch/tmp/</tmp_path>
    <user_files_path>$ch/user_files/</user_files_path>
    <format_schema_path>$ch/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>536870912</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
</yandex>
XML
  log "starting clickhouse-server"
  setsid nohup /usr/sbin/clickhouse-server --config-file="$ch/config.xml" >"$dir/clickhouse.log" 2>&1 </dev/null &
  echo $! >"$dir/clickhouse.pid"
  wait_for clickhouse clickhouse_up 90
}

stop() { # name
  local pidfile=$dir/$1.pid
  [[ -f $pidfile ]] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "$1 stopped"
}

status() {
  if kafka_up; then echo "kafka: up (127.0.0.1:$kafka_port)"; else echo "kafka: down"; fi
  if clickhouse_up; then echo "clickhouse: up (http://127.0.0.1:$ch_http_port)"; else echo "clickhouse: down"; fi
  if s3_up; then echo "s3: up (http://127.0.0.1:$s3_port, bucket idempipe)"; else echo "s3: down"; fi
}

# Kafka: tansu (one process; TLS through stunnel), or with KAFKA_IMPL=apache, Apache Kafka
# (scripts/kafka.sh: a KRaft controller and two brokers).
kafka() { # action...
  SERVICES_DIR=$dir KAFKA_PORT=$kafka_port "$root/scripts/kafka.sh" "$@"
}
start_kafka() { if [[ $kafka_impl == tansu ]]; then start_tansu; else kafka up >/dev/null; fi; }
stop_kafka() { if [[ $kafka_impl == tansu ]]; then stop stunnel; stop tansu; else kafka down; fi; }

case ${1:-} in
  up) start_kafka; start_clickhouse; start_s3; status ;;
  down) stop_kafka; stop clickhouse; stop s3 ;;
  restart-kafka) stop_kafka; start_kafka ;;
  kafka-down) stop_kafka ;;
  kafka-up) start_kafka ;;
  kafka-fresh)
    if [[ $kafka_impl != tansu ]]; then kafka fresh >/dev/null; exit 0; fi
    stop stunnel
    stop tansu
    # A tansu of ours whose pid file is gone (another checkout) still holds the port.
    pkill -f "tansu broker --listener-url tcp://127.0.0.1:$kafka_port" || true
    for _ in $(seq 50); do kafka_up || break; sleep 0.2; done
    rm -f "$dir"/tansu.db "$dir"/tansu.db-*
    start_tansu ;;
  kafka-stop-broker|kafka-start-broker|kafka-stop-controller|kafka-start-controller)
    [[ $kafka_impl != tansu ]] || { log "$1: Apache Kafka only (tansu is one process)"; exit 2; }
    action=${1#kafka-}; shift; kafka "$action" "$@" ;;
  kafka-install)
    if [[ $kafka_impl == tansu ]]; then install_tansu; else kafka install; fi ;;
  clickhouse-up) start_clickhouse ;;
  clickhouse-down) stop clickhouse ;;
  s3-up) start_s3 ;;
  s3-down) stop s3 ;;
  build-deps) install_build_deps ;;
  status) status; kafka_up && clickhouse_up && s3_up ;;
  *) echo "usage: $0 up|down|status|restart-kafka|kafka-down|kafka-up|kafka-fresh|kafka-install|kafka-stop-broker N|kafka-start-broker N|kafka-stop-controller|kafka-start-controller|clickhouse-up|clickhouse-down|s3-up|s3-down|build-deps" >&2; exit 2 ;;
esac
