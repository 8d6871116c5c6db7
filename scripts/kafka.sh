#!/usr/bin/env bash
# Installs (if missing) and runs an Apache Kafka cluster on loopback, for the tests and the demo:
#   a KRaft controller (node 1, static voter) on 127.0.0.1:KAFKA_PORT+1 and two brokers
#   (nodes 2 and 3) on 127.0.0.1:KAFKA_PORT and 127.0.0.1:KAFKA_PORT+2, each its own JVM,
#   run from Maven Central's jars (scripts/kafka/pom.xml pins the versions) as Kafka's own
#   bin/kafka-server-start.sh and bin/kafka-storage.sh run them (kafka.Kafka,
#   kafka.tools.StorageTool; G1; Log4j 2 configured by scripts/kafka/log4j2.yaml).
#   Topics default to 4 partitions with 2 replicas (min.insync.replicas 1, so one broker
#   serves alone), and records up to 10 MiB are accepted.
# Usage: scripts/kafka.sh install|up|down|fresh|status|stop-broker N|start-broker N|stop-controller|start-controller|acl ARGS...
#   install            copies the jars into KAFKA_LIBS with Maven (once; Java and Maven come
#                      from Debian's packages when missing)
#   up                 starts the nodes that do not run (formatting the storage of any that
#                      has none), waits until each broker answers a metadata request that
#                      lists every running broker, then prints `status`
#   down               stops the brokers, then the controller (SIGTERM; SIGKILL after a bound)
#   fresh              down, deletes the cluster's data (not the jars), up on a new cluster id
#   stop-broker N      stops broker N (1 or 2); with KILL=1 by SIGKILL, as in a crash
#   start-broker N     starts broker N again on its data and waits until it answers
#   stop-controller    stops the controller: the brokers keep serving the partitions they
#                      lead, but what goes through the controller waits (new topics, ISR
#                      changes, a crashed broker's fencing, producer ids for new idempotent
#                      producers); start-controller starts it again
#   status             prints each node, its pid and port; exits non-zero unless all three run
#   acl ARGS...        runs Kafka's ACL tool (kafka-acls.sh: org.apache.kafka.tools.AclCommand)
#                      against broker 1 as the brokers' own user, e.g.
#                      acl --add --allow-principal User:app --operation Read --topic t
# Environment:
#   SERVICES_DIR       where the cluster lives, under kafka/: per node (controller, broker1,
#                      broker2) server.properties, data/, node.log (and node.log.1, the run
#                      before), pid; the cluster id in kafka/cluster.id
#                      (default: data/services in the checkout)
#   KAFKA_PORT         broker 1's port (default 9092)
#   KAFKA_CONTROLLER_PORT, KAFKA_PORT2   the controller's and broker 2's ports (default
#                      KAFKA_PORT+1 and KAFKA_PORT+2; set them when KAFKA_PORT is any free port)
#   KAFKA_LIBS         the jars (default data/kafka/<version>/libs in the checkout, shared by
#                      every SERVICES_DIR)
#   KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD   with both, the brokers' listeners take
#                      SASL_PLAINTEXT with SCRAM-SHA-512 only; the user is made at format
#                      time, or made or given this password on a start that finds it
#                      different (restart with a new password: down, then up). The brokers
#                      reach each other as a user of their own, kafka-sh-broker (its
#                      password in kafka/broker.secret)
#   KAFKA_REAUTH_MS    with SCRAM: the brokers' connections.max.reauth.ms (default 0: never);
#                      a client re-authenticates each connection within it (KIP-368), so a
#                      password changed on the running cluster (`up` with a new one) is
#                      asked of every connection within that time
#   KAFKA_ACL          1 (with SCRAM only): the nodes authorize every request with Kafka's
#                      StandardAuthorizer; only the brokers' own user (and the unauthenticated
#                      controller listener) are super users, so a client's user may do what
#                      ACLs allow it (`acl`) and nothing else
#   KAFKA_TLS_PORT, KAFKA_TLS_CERT, KAFKA_TLS_KEY   with all three, each broker also
#                      listens with TLS (SSL, or SASL_SSL with SCRAM) with that certificate
#                      and key (PEM, the key unencrypted PKCS#8, as `openssl req -nodes`
#                      writes): broker 1 on KAFKA_TLS_PORT, broker 2 on KAFKA_TLS_PORT2
#                      (default KAFKA_TLS_PORT+1); a client that bootstraps on a TLS port is
#                      given the TLS ports (the brokers reach each other on the plain ones)
#   KAFKA_START_TIMEOUT  seconds a node may take to start (default 120)
#   KAFKA_OPTS         extra JVM options for every node
#   KAFKA_CDS          0: no class data sharing archive (see cds_archive below)
#   JAVA_HOME          the Java to run (default: java on PATH; Kafka 4 needs 17 or newer)
# Running `up` twice is harmless: a node that runs is left alone.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SERVICES_DIR:-$root/data/services}
kdir=$dir/kafka
pom=$root/scripts/kafka/pom.xml
log4j=$root/scripts/kafka/log4j2.yaml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
libs=${KAFKA_LIBS:-$root/data/kafka/$version/libs}
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
port1=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-$((port1 + 1))}
port2=${KAFKA_PORT2:-$((port1 + 2))}
start_timeout=${KAFKA_START_TIMEOUT:-120}
scram_user=${KAFKA_SCRAM_USER:-}
scram_password=${KAFKA_SCRAM_PASSWORD:-}
[[ -n $scram_user && -n $scram_password ]] || scram_user=""
if [[ -n $scram_user && $scram_user$scram_password == *[\"\\,=\[\]]* ]]; then
  # They go unquoted into --add-scram's [name=…,password=…] and quoted into a JAAS line.
  echo "kafka: KAFKA_SCRAM_USER and KAFKA_SCRAM_PASSWORD may not hold \" \\ , = [ ]" >&2; exit 2
fi
acl=${KAFKA_ACL:-0}
if [[ $acl == 1 && -z $scram_user ]]; then
  echo "kafka: KAFKA_ACL=1 needs KAFKA_SCRAM_USER and KAFKA_SCRAM_PASSWORD (without SASL every client is a super user)" >&2
  exit 2
fi
tls_port1="" tls_port2=""
if [[ -n ${KAFKA_TLS_PORT:-} && -n ${KAFKA_TLS_CERT:-} && -n ${KAFKA_TLS_KEY:-} ]]; then
  tls_port1=$KAFKA_TLS_PORT
  tls_port2=${KAFKA_TLS_PORT2:-$((KAFKA_TLS_PORT + 1))}
fi
nodes=(controller broker1 broker2)
brokers=(broker1 broker2)

log() { echo "kafka: $*" >&2; }
die() { log "$*"; exit 1; }

node_id() { case $1 in controller) echo 1 ;; broker1) echo 2 ;; broker2) echo 3 ;; esac; }
node_port() { case $1 in controller) echo "$cport" ;; broker1) echo "$port1" ;; broker2) echo "$port2" ;; esac; }
tls_port() { case $1 in broker1) echo "$tls_port1" ;; broker2) echo "$tls_port2" ;; esac; }

# --- install -------------------------------------------------------------------------------

install_tools() {
  local missing=()
  command -v "$java" >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >"$dir/kafka-tools-install.log" 2>&1 \
    || { tail -30 "$dir/kafka-tools-install.log" >&2; die "installing ${missing[*]} failed"; }
}

# The jars, once: they are complete when libs/.complete holds the hash of the pom that made
# them (a changed pom installs again). Several scripts may ask at once: one installs.
install() {
  local stamp; stamp=$(sha256sum <"$pom" | cut -d' ' -f1)
  if [[ $(cat "$libs/.complete" 2>/dev/null) == "$stamp" ]]; then return; fi
  mkdir -p "$dir" "$(dirname "$libs")"
  install_tools
  (
    flock 9
    if [[ $(cat "$libs/.complete" 2>/dev/null) == "$stamp" ]]; then exit 0; fi
    log "installing Apache Kafka $version's jars from Maven Central into $libs (once per checkout)"
    rm -rf "$libs.tmp"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$libs.tmp" >"$libs.install.log" 2>&1 \
      || { tail -30 "$libs.install.log" >&2; die "the jars' install failed (log: $libs.install.log)"; }
    echo "$stamp" >"$libs.tmp/.complete"
    rm -rf "$libs"
    mv "$libs.tmp" "$libs"
  ) 9>"$libs.lock"
}

# --- configuration and storage -------------------------------------------------------------

# The listener clients (and the brokers, between themselves) use.
client_listener() { if [[ -n $scram_user ]]; then echo SASL_PLAINTEXT; else echo PLAINTEXT; fi; }

# Written on every start, so a changed port, SCRAM or TLS setting takes effect on the same
# data.
write_config() { # node
  local node=$1 nd=$kdir/$1 port listener tport tls sasl jaas
  port=$(node_port "$node")
  tport=$(tls_port "$node")
  listener=$(client_listener)
  if [[ -n $scram_user ]]; then tls=SASL_SSL; else tls=SSL; fi
  mkdir -p "$nd/data"
  {
    echo "# Written by scripts/kafka.sh on each start: edits are lost."
    echo "node.id=$(node_id "$node")"
    echo "controller.quorum.voters=1@127.0.0.1:$cport"
    echo "controller.listener.names=CONTROLLER"
    echo "log.dirs=$nd/data"
    if [[ $node == controller ]]; then
      echo "process.roles=controller"
      echo "listeners=CONTROLLER://127.0.0.1:$cport"
      echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT"
    elif [[ -z $tport ]]; then
      echo "process.roles=broker"
      echo "listeners=$listener://127.0.0.1:$port"
      echo "advertised.listeners=$listener://127.0.0.1:$port"
      echo "inter.broker.listener.name=$listener"
      echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,$listener:$listener"
    else
      echo "process.roles=broker"
      echo "listeners=$listener://127.0.0.1:$port,$tls://127.0.0.1:$tport"
      echo "advertised.listeners=$listener://127.0.0.1:$port,$tls://127.0.0.1:$tport"
      echo "inter.broker.listener.name=$listener"
      echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,$listener:$listener,$tls:$tls"
      # Kafka reads a PEM key store as the key followed by its certificate chain.
      (umask 077; cat "$KAFKA_TLS_KEY" "$KAFKA_TLS_CERT" >"$nd/keystore.pem")
      echo "ssl.keystore.type=PEM"
      echo "ssl.keystore.location=$nd/keystore.pem"
    fi
    if [[ $node != controller && -n $scram_user ]]; then
      echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
      echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
      # Each SASL listener needs a login context, the inter-broker one to log in with.
      jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$broker_user\" password=\"$(broker_password)\";"
      for sasl in sasl_plaintext ${tport:+sasl_ssl}; do
        echo "listener.name.$sasl.scram-sha-512.sasl.jaas.config=$jaas"
      done
      echo "connections.max.reauth.ms=${KAFKA_REAUTH_MS:-0}"
    fi
    if [[ $acl == 1 ]]; then
      echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
      # The brokers reach the controller on its plaintext listener, unauthenticated.
      echo "super.users=User:$broker_user;User:ANONYMOUS"
    fi
    if [[ $node == controller ]]; then
      # The controller fills in a topic's partitions and replicas when the request leaves
      # them out (auto-created topics too); Kafka 4.4 warns when a broker sets these.
      echo "num.partitions=4"
      echo "default.replication.factor=2"
    fi
    cat <<PROPS
min.insync.replicas=1
offsets.topic.replication.factor=2
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=2
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=2
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Segments past a topic's retention go within a second (Kafka's default looks every 5
# minutes): a topic given a short retention.ms shows retention at work at once.
log.retention.check.interval.ms=1000
# Records up to 10 MiB (the tests send 5 MiB ones, which idempipe's own limit must refuse),
# replicated whole, within a request size well above that.
message.max.bytes=10485760
replica.fetch.max.bytes=10485760
replica.fetch.response.max.bytes=20971520
socket.request.max.bytes=104857600
PROPS
  } >"$nd/server.properties"
  # It may hold the SCRAM password.
  chmod 600 "$nd/server.properties"
}

# Short-lived tools: a small heap, the serial collector and the first compiler start fastest.
tool() { # main class, args...
  "$java" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$log4j" -Dkafka.log.level=WARN -Dkafka.log.target=SYSTEM_ERR \
    -cp "$libs/*" "$@" 8>&-
}

cluster_id() {
  if [[ ! -s $kdir/cluster.id ]]; then
    mkdir -p "$kdir"
    local id
    id=$(tool kafka.tools.StorageTool random-uuid | tail -1)
    [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid printed no cluster id: $id"
    echo "$id" >"$kdir/cluster.id"
  fi
  cat "$kdir/cluster.id"
}

# The brokers reach each other, and this script reaches them, as a SCRAM user of their own
# (with a password made for the cluster), so the user of KAFKA_SCRAM_USER can be made or
# have its password changed on a running cluster: Kafka 4.4 takes SCRAM changes only
# through a broker (a controller answers UnsupportedEndpointTypeException).
broker_user=kafka-sh-broker
broker_password() {
  if [[ ! -s $kdir/broker.secret ]]; then
    mkdir -p "$kdir"
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '+/=' >"$kdir/broker.secret")
  fi
  cat "$kdir/broker.secret"
}

# Formats (in parallel) the nodes whose storage has no meta.properties yet. The SCRAM users
# go into the bootstrap metadata, which the controller reads on its first start: the
# brokers' own always (a cluster made plain may be started with SCRAM later), the
# KAFKA_SCRAM_USER one when set.
format_missing() {
  local node id pids=() names=() extra=() i failed=0
  for node in "${nodes[@]}"; do
    [[ -f $kdir/$node/data/meta.properties ]] || names+=("$node")
  done
  ((${#names[@]})) || return 0
  id=$(cluster_id)
  extra=(--add-scram "SCRAM-SHA-512=[name=$broker_user,password=$(broker_password)]")
  if [[ -n $scram_user ]]; then
    extra+=(--add-scram "SCRAM-SHA-512=[name=$scram_user,password=$scram_password]")
  fi
  log "formatting ${names[*]} (cluster $id)"
  for node in "${names[@]}"; do
    tool kafka.tools.StorageTool format -t "$id" -c "$kdir/$node/server.properties" "${extra[@]}" \
      >"$kdir/$node/format.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      log "formatting ${names[$i]} failed:"; tail -20 "$kdir/${names[$i]}/format.log" >&2; failed=1
    fi
  done
  ((failed == 0)) || exit 1
  if [[ -n $scram_user ]]; then scram_stamp >"$kdir/scram"; fi
}

# What the SCRAM user was last set to (the password only as a hash).
scram_stamp() { printf '%s %s\n' "$scram_user" "$(printf '%s' "$scram_password" | sha256sum | cut -d' ' -f1)"; }

# The client settings of the brokers' own user, for Kafka's tools.
admin_properties() {
  (
    umask 077
    cat >"$kdir/admin.properties" <<PROPS
security.protocol=$(client_listener)
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$broker_user" password="$(broker_password)";
PROPS
  )
}

# With SCRAM on a cluster whose KAFKA_SCRAM_USER or password differs from the one it was
# last given, (re)sets it through a running broker, as the brokers' user, and waits until
# every running broker takes the new password.
ensure_scram_user() {
  [[ -n $scram_user ]] || return 0
  if [[ $(cat "$kdir/scram" 2>/dev/null) == "$(scram_stamp)" ]]; then return; fi
  local node port="" deadline=$((SECONDS + 60))
  for node in "${brokers[@]}"; do
    if [[ -n $(node_pid "$node") ]]; then port=$(node_port "$node"); break; fi
  done
  [[ -n $port ]] || return 0
  log "setting the SCRAM user $scram_user's password"
  admin_properties
  tool org.apache.kafka.tools.ConfigCommand --bootstrap-server "127.0.0.1:$port" \
    --command-config "$kdir/admin.properties" --alter --entity-type users --entity-name "$scram_user" \
    --add-config "SCRAM-SHA-512=[password=$scram_password]" >"$kdir/scram.log" 2>&1 \
    || { tail -20 "$kdir/scram.log" >&2; die "setting the SCRAM user failed (log: $kdir/scram.log)"; }
  for node in "${brokers[@]}"; do
    [[ -n $(node_pid "$node") ]] || continue
    until metadata_brokers "$(node_port "$node")" "$scram_user" "$scram_password" >/dev/null 2>&1; do
      ((SECONDS < deadline)) || die "$node does not take $scram_user's new password"
      sleep 0.3
    done
  done
  scram_stamp >"$kdir/scram"
}

# --- processes -----------------------------------------------------------------------------

# The node's pid if it runs: from its pid file, checked against the command line (a reused
# pid is not ours), else found by its config path (a pid file lost to an earlier `fresh`).
node_pid() { # node
  local conf=$kdir/$1/server.properties pid
  pid=$(cat "$kdir/$1/pid" 2>/dev/null || true)
  if [[ -n $pid ]] && { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "kafka.Kafka $conf"; then
    echo "$pid"; return
  fi
  pgrep -f -- "kafka.Kafka $conf\$" | head -1 || true
}

# A process that ended but is not reaped yet (a zombie) has let go of its ports and files.
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Before any node starts: a port that answers without our node is someone else's.
check_ports() { # nodes...
  local node port
  for node in "$@"; do
    for port in $(node_port "$node") $(tls_port "$node"); do
      if port_answers "$port"; then
        die "port $port ($node) is taken by another process (a tansu? scripts/services.sh kafka-down); set KAFKA_PORT"
      fi
    done
  done
}

# Class data sharing: the classes a broker loaded, archived by its JVM when it ends on
# SIGTERM (-XX:ArchiveClassesAtExit, into its directory, then moved next to the jars) and
# mapped by every node after (-XX:SharedArchiveFile): a node then starts in about two
# thirds of the time, and the nodes share that memory. One archive per JVM build and set of
# jars (a JVM refuses an archive of another build and starts without it). KAFKA_CDS=0: off.
cds_archive() {
  local jvm
  jvm=$(dirname "$(dirname "$(readlink -f "$(command -v "$java")")")")/lib/server/libjvm.so
  echo "$(dirname "$libs")/cds/kafka-$(stat -Lc '%s-%Y' "$jvm" 2>/dev/null || echo unknown).jsa"
}

cds_options() { # node; sets cds
  local archive
  cds=()
  [[ ${KAFKA_CDS:-1} == 1 ]] || return 0
  archive=$(cds_archive)
  if [[ -f $archive ]]; then
    cds=(-XX:SharedArchiveFile="$archive")
  elif [[ $1 == broker1 ]]; then
    rm -f "$kdir/$1/kafka.jsa"
    cds=(-XX:ArchiveClassesAtExit="$kdir/$1/kafka.jsa")
  fi
}

# After a clean stop: the archive the node wrote, if any, goes beside the jars (copied, then
# renamed there, so no JVM maps half a file).
cds_keep() { # node
  local made=$kdir/$1/kafka.jsa archive
  [[ -s $made ]] || return 0
  archive=$(cds_archive)
  if [[ ! -f $archive ]]; then
    mkdir -p "$(dirname "$archive")"
    cp "$made" "$archive.$$.tmp"
    mv -f "$archive.$$.tmp" "$archive"
  fi
  rm -f "$made"
}

launch() { # node
  local node=$1 nd=$kdir/$1 port heap cds
  port=$(node_port "$node")
  cds_options "$node"
  case $node in
    controller) heap=(-Xms64m -Xmx256m) ;;
    *) heap=(-Xms128m -Xmx512m) ;;
  esac
  if [[ -f $nd/node.log ]]; then mv -f "$nd/node.log" "$nd/node.log.1"; fi
  log "starting $node (node $(node_id "$node"), 127.0.0.1:$port)"
  # Kafka's kafka-run-class.sh options, its GC log included (gc.log beside node.log: a
  # pause there explains a broker fenced for a late heartbeat); an out-of-memory error
  # ends the node instead of leaving it half alive.
  # shellcheck disable=SC2086
  setsid nohup "$java" "${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "${cds[@]}" \
    "-Xlog:gc*,safepoint:file=$nd/gc.log:time,uptime,tags:filecount=2,filesize=10m" \
    -Dlog4j2.configurationFile="$log4j" ${KAFKA_OPTS:-} \
    -cp "$libs/*" kafka.Kafka "$nd/server.properties" >"$nd/node.log" 2>&1 </dev/null 8>&- &
  echo $! >"$nd/pid"
}

node_failed() { # node, what
  log "$1 $2; the end of $kdir/$1/node.log:"
  tail -30 "$kdir/$1/node.log" >&2 || true
  exit 1
}

# Until the node logs that it started (a broker does once it is unfenced and serves).
wait_started() { # node
  local node=$1 deadline=$((SECONDS + start_timeout)) pid
  pid=$(node_pid "$node")
  until grep -q 'Kafka Server started' "$kdir/$node/node.log" 2>/dev/null; do
    if [[ -z $pid ]] || ! alive "$pid"; then node_failed "$node" "exited while starting"; fi
    ((SECONDS < deadline)) || node_failed "$node" "did not start in $start_timeout s"
    sleep 0.3
  done
}

# How many brokers a Metadata request (v4, no topics) to 127.0.0.1:PORT lists; with SCRAM,
# after a SCRAM-SHA-512 exchange (SaslHandshake v1, SaslAuthenticate v1) as USER (default:
# the brokers' own). Plain Python: no client library, no JVM.
metadata_brokers() { # port [user password]
  local user="" password=""
  if [[ -n $scram_user ]]; then user=${2:-$broker_user}; password=${3:-$(broker_password)}; fi
  SCRAM_USER=$user SCRAM_PASSWORD=$password python3 - "$1" <<'PY'
import base64, hashlib, hmac, os, socket, struct, sys

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
correlation = 0

def read(n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data

def call(api_key, version, body):
    global correlation
    correlation += 1
    client = b"kafka.sh"
    request = struct.pack(">hhih", api_key, version, correlation, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    (size,) = struct.unpack(">i", read(4))
    return read(size)[4:]  # past the correlation id

def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b

user, password = os.environ.get("SCRAM_USER"), os.environ.get("SCRAM_PASSWORD")
if user:
    if struct.unpack(">h", call(17, 1, string("SCRAM-SHA-512"))[:2])[0]:
        sys.exit("SCRAM-SHA-512 not enabled")

    def authenticate(message):
        m = message.encode()
        r = call(36, 1, struct.pack(">i", len(m)) + m)
        error, length = struct.unpack(">hh", r[:4])
        end = 4 + max(length, 0)
        if error:
            sys.exit("authentication failed: " + r[4:end].decode())
        (size,) = struct.unpack(">i", r[end : end + 4])
        return r[end + 4 : end + 4 + size].decode()

    bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), base64.b64encode(os.urandom(18)).decode())
    first = authenticate("n,," + bare)
    server = dict(kv.split("=", 1) for kv in first.split(","))
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(server["s"]), int(server["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    without_proof = "c=biws,r=" + server["r"]
    signature = hmac.new(hashlib.sha512(client_key).digest(), ",".join([bare, first, without_proof]).encode(), "sha512").digest()
    authenticate(without_proof + ",p=" + base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode())
response = call(3, 4, struct.pack(">i?", 0, False))
print(struct.unpack(">i", response[4:8])[0])  # past throttle_time_ms: the brokers' count
PY
}

# Until the broker answers a metadata request that lists `want` brokers.
wait_answers() { # node, want
  local node=$1 want=$2 port deadline=$((SECONDS + start_timeout)) pid seen
  port=$(node_port "$node")
  pid=$(node_pid "$node")
  while :; do
    seen=$(metadata_brokers "$port" 2>/dev/null || true)
    if [[ -n $seen ]] && ((seen >= want)); then return; fi
    if [[ -z $pid ]] || ! alive "$pid"; then node_failed "$node" "exited while starting"; fi
    ((SECONDS < deadline)) || node_failed "$node" "did not list $want brokers in $start_timeout s (last: ${seen:-no answer})"
    sleep 0.3
  done
}

start_nodes() { # nodes...
  local node started=()
  install
  mkdir -p "$kdir"
  for node in "${nodes[@]}"; do write_config "$node"; done
  for node in "$@"; do
    if [[ -n $(node_pid "$node") ]]; then log "$node already runs"; else started+=("$node"); fi
  done
  check_ports "${started[@]}"
  format_missing
  for node in "${started[@]}"; do launch "$node"; done
  for node in "${started[@]}"; do wait_started "$node"; done
  # Every running broker must see the others before a topic with 2 replicas can be made.
  local running=0 want
  for node in "${brokers[@]}"; do [[ -z $(node_pid "$node") ]] || running=$((running + 1)); done
  for node in "${brokers[@]}"; do
    if [[ -n $(node_pid "$node") ]]; then want=$running; wait_answers "$node" "$want"; fi
  done
  ensure_scram_user
}

# SIGTERM (a broker then hands its partitions over through the controller), SIGKILL after
# `bound` seconds; with KILL=1 straight away.
stop_nodes() { # bound, nodes...
  local bound=$1 node pid pids=() names=() alive deadline signal=TERM
  shift
  if [[ ${KILL:-0} == 1 ]]; then signal=KILL; fi
  for node in "$@"; do
    pid=$(node_pid "$node")
    rm -f "$kdir/$node/pid"
    [[ -n $pid ]] || continue
    kill -s "$signal" "$pid" 2>/dev/null || true
    pids+=("$pid"); names+=("$node")
  done
  ((${#pids[@]})) || return 0
  deadline=$((SECONDS + bound))
  while :; do
    alive=()
    for pid in "${pids[@]}"; do if alive "$pid"; then alive+=("$pid"); fi; done
    ((${#alive[@]})) || break
    if ((SECONDS >= deadline)) && [[ $signal != KILL ]]; then
      log "pid ${alive[*]} did not stop in $bound s: SIGKILL"
      kill -9 "${alive[@]}" 2>/dev/null || true
      signal=KILL
    fi
    sleep 0.2
  done
  if [[ $signal == TERM ]]; then
    for node in "${names[@]}"; do cds_keep "$node"; done
  else
    for node in "${names[@]}"; do rm -f "$kdir/$node/kafka.jsa"; done
  fi
  log "${names[*]} stopped (SIG$signal)"
}

# A broker's clean shutdown hands its partitions over through the controller: without one
# it waits (minutes), so it is given only a few seconds to flush before SIGKILL.
broker_bound() { if [[ -n $(node_pid controller) ]]; then echo 30; else echo 5; fi; }

down() {
  stop_nodes "$(broker_bound)" "${brokers[@]}"
  stop_nodes 30 controller
}

status() {
  local node pid all=0 port
  for node in "${nodes[@]}"; do
    pid=$(node_pid "$node")
    port=$(node_port "$node")
    if [[ -n $(tls_port "$node") ]]; then port="$port, TLS 127.0.0.1:$(tls_port "$node")"; fi
    if [[ -n $pid ]] && port_answers "${port%%,*}"; then
      echo "kafka $node (node $(node_id "$node")): up, pid $pid, 127.0.0.1:$port"
    elif [[ -n $pid ]]; then
      echo "kafka $node (node $(node_id "$node")): starting, pid $pid, 127.0.0.1:$port"; all=1
    else
      echo "kafka $node (node $(node_id "$node")): down (127.0.0.1:$port)"; all=1
    fi
  done
  return $all
}

broker_arg() { # N
  case ${1:-} in
    1 | 2) echo "broker$1" ;;
    *) echo "usage: $0 stop-broker|start-broker 1|2" >&2; exit 2 ;;
  esac
}

mkdir -p "$dir"
# One command at a time on a cluster: tests may call this script from several threads.
exec 8>"$dir/kafka.lock"
flock 8

case ${1:-} in
  install) install ;;
  up) start_nodes "${nodes[@]}"; status ;;
  down) down ;;
  fresh)
    down
    rm -rf "$kdir"
    start_nodes "${nodes[@]}"
    status ;;
  stop-broker) stop_nodes "$(broker_bound)" "$(broker_arg "${2:-}")" ;;
  start-broker) start_nodes "$(broker_arg "${2:-}")" ;;
  stop-controller) stop_nodes 30 controller ;;
  start-controller) start_nodes controller ;;
  status) status ;;
  acl)
    shift
    admin_properties
    tool org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$port1" \
      --command-config "$kdir/admin.properties" "$@" ;;
  *) echo "usage: $0 install|up|down|fresh|status|stop-broker N|start-broker N|stop-controller|start-controller|acl ARGS..." >&2; exit 2 ;;
esac
