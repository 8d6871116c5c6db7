#!/usr/bin/env bash
# A schema registry that speaks Confluent's API, on loopback: Apicurio Registry (the
# `apicurio-registry-app` distribution from Maven Central, classifier `all`, a Quarkus
# application), its Confluent-compatible API under /apis/ccompat/v7, schemas kept in
# memory (they are gone after a restart).
# Usage: scripts/registry.sh install|up|down|status|url
#   install  fetches the pinned version (REGISTRY_VERSION below) with Maven into
#            data/apicurio/<version> unless it is there
#   up       starts it (installed if missing) unless it answers; waits until the API answers
#   down     stops the one whose pid file is in SERVICES_DIR
#   status   exits zero if the API answers
#   url      prints the Confluent-compatible API's URL
# Environment:
#   REGISTRY_PORT   its HTTP port (default 9180)
#   REGISTRY_MANAGEMENT_PORT  its health and metrics port (default REGISTRY_PORT + 1)
#   REGISTRY_TLS_CERT, REGISTRY_TLS_KEY  PEM certificate and key: HTTPS only, on
#                   REGISTRY_PORT (plain HTTP refused)
#   REGISTRY_JAVA   the java to run it with; by default JAVA_HOME's, or the newest JDK under
#                   /usr/lib/jvm, whichever is version 21 or later (Apicurio 3.3 needs 21)
#   SERVICES_DIR    where its log and pid file live (default data/services)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=3.3.3
dir=${SERVICES_DIR:-$root/data/services}
[[ $dir == /* ]] || dir=$PWD/$dir
install_dir=$root/data/apicurio/$version
port=${REGISTRY_PORT:-9180}
# Its health and metrics interface (Quarkus's default, 0.0.0.0:9000, is ClickHouse's).
management_port=${REGISTRY_MANAGEMENT_PORT:-$((port + 1))}
# With REGISTRY_TLS_CERT and REGISTRY_TLS_KEY (PEM files), HTTPS only on $port.
tls=${REGISTRY_TLS_CERT:+yes}
if [[ -n $tls ]]; then
  url=https://127.0.0.1:$port/apis/ccompat/v7
else
  url=http://127.0.0.1:$port/apis/ccompat/v7
fi

log() { echo "registry: $*" >&2; }
die() { log "$*"; exit 1; }

# The major version a java prints (`openjdk version "25.0.3"` -> 25), or 0.
java_major() { "$1" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -1 || echo 0; }

find_java() {
  local candidate best="" best_major=0 major
  if [[ -n ${REGISTRY_JAVA:-} ]]; then
    major=$(java_major "$REGISTRY_JAVA")
    ((major >= 21)) || die "REGISTRY_JAVA ($REGISTRY_JAVA) is Java ${major:-?}; Apicurio $version needs 21 or later"
    echo "$REGISTRY_JAVA"
    return
  fi
  for candidate in ${JAVA_HOME:+$JAVA_HOME/bin/java} /usr/lib/jvm/*/bin/java; do
    [[ -x $candidate ]] || continue
    major=$(java_major "$candidate")
    if ((major > best_major)); then best=$candidate best_major=$major; fi
  done
  ((best_major >= 21)) || die "no Java 21 or later found (JAVA_HOME, /usr/lib/jvm); Apicurio $version needs one: set REGISTRY_JAVA"
  echo "$best"
}

install() {
  [[ -f $install_dir/quarkus-run.jar ]] && return
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Apicurio Registry from Maven Central"
  log "fetching io.apicurio:apicurio-registry-app:$version (tar.gz, all) from Maven Central"
  mkdir -p "$install_dir"
  mvn -q dependency:copy "-Dartifact=io.apicurio:apicurio-registry-app:$version:tar.gz:all" \
    "-DoutputDirectory=$install_dir" >&2
  tar -xzf "$install_dir/apicurio-registry-app-$version-all.tar.gz" -C "$install_dir"
  rm -f "$install_dir/apicurio-registry-app-$version-all.tar.gz"
  [[ -f $install_dir/quarkus-run.jar ]] || die "the distribution has no quarkus-run.jar"
}

# Whether the API answers (over TLS, whatever signs its certificate: a loopback check).
answers() { curl -fsSk "$url/subjects" >/dev/null 2>&1; }

up() {
  if answers; then return; fi
  install
  local java pid deadline=$((SECONDS + ${REGISTRY_START_TIMEOUT:-90}))
  java=$(find_java)
  mkdir -p "$dir"
  log "starting Apicurio Registry $version on 127.0.0.1:$port ($java)"
  local listen=("-Dquarkus.http.port=$port")
  if [[ -n $tls ]]; then
    listen=("-Dquarkus.http.ssl-port=$port" "-Dquarkus.http.port=$((port + 2))" -Dquarkus.http.insecure-requests=disabled
      "-Dquarkus.http.ssl.certificate.files=$REGISTRY_TLS_CERT"
      "-Dquarkus.http.ssl.certificate.key-files=${REGISTRY_TLS_KEY:?REGISTRY_TLS_KEY is needed with REGISTRY_TLS_CERT}")
  fi
  (cd "$install_dir" && exec "$java" -Xmx512m "-Dquarkus.http.host=127.0.0.1" "${listen[@]}" \
    "-Dquarkus.management.host=127.0.0.1" "-Dquarkus.management.port=$management_port" \
    -jar quarkus-run.jar >"$dir/registry.log" 2>&1) &
  pid=$!
  echo "$pid" >"$dir/registry.pid"
  until answers; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/registry.log" >&2; die "it exited (log: $dir/registry.log)"; }
    ((SECONDS < deadline)) || die "it does not answer at $url (log: $dir/registry.log)"
    sleep 1
  done
  log "up ($url)"
}

down() {
  local pid
  pid=$(cat "$dir/registry.pid" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped"
  fi
  rm -f "$dir/registry.pid"
}

case ${1:-} in
  install) install ;;
  up) up ;;
  down) down ;;
  status) answers ;;
  url) echo "$url" ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
