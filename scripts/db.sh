#!/usr/bin/env bash
# db.sh up|down|purge|pid|status|url [NAME] [PORT]
#
# A real PostgreSQL server for development and tests, on a loopback port, with
# password (scram-sha-256) authentication. `up` installs the Debian postgresql
# package if no server binaries exist, runs initdb on first use, starts the
# server and prints the admin URL. NAME selects the cluster (default "dev");
# NAME=test* clusters are recreated from scratch on every `up` and run with
# fsync off (throwaway data, faster tests); `purge` stops a test* cluster and
# deletes its data (a benchmark's gigabytes); `pid` prints the postmaster's pid.
#
# PostgreSQL refuses to run as root; as root the server runs as the `postgres`
# user and its data lives under /var/tmp/chorus-pg (root's cache dir is not
# readable by other users).
source "$(dirname "$0")/lib.sh"
cmd=${1:-status}
name=${2:-dev}
port_arg=${3:-}

pg_bin=${PG_BIN:-}
if [ -z "$pg_bin" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin=$d; done
fi
if [ -z "$pg_bin" ] && [ "$cmd" = up ]; then
  step "no PostgreSQL server binaries found; installing Debian's postgresql package"
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null || {
      apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
  else
    die "PostgreSQL server binaries are missing; install them: sudo apt-get install postgresql"
  fi
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin=$d; done
fi

if [ "$(id -u)" = 0 ]; then
  base=/var/tmp/chorus-pg
  as_pg() { runuser -u postgres -- "$@"; }
  mkdir -p "$base"; chown postgres "$base"; chmod 700 "$base"
else
  base=$CHORUS_CACHE/pg
  as_pg() { "$@"; }
  mkdir -p "$base"
fi
dir=$base/$name
data=$dir/data
sock=$dir/sock

server_pid() { head -n 1 "$data/postmaster.pid" 2>/dev/null || true; }
running() { pid_alive "$(server_pid)"; }
admin_url() {
  echo "postgres://postgres:$(cat "$dir/admin-password")@127.0.0.1:$(cat "$dir/port")/postgres"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop() {
  if running; then
    as_pg "$pg_bin/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null || kill -KILL "$(server_pid)" 2>/dev/null || true
    return 0
  fi
  return 1
}

case $cmd in
up)
  [ -n "$pg_bin" ] || die "PostgreSQL server binaries not found"
  case $name in
    test*)
      if stop; then step "stopped PostgreSQL '$name' left running by an earlier run"; fi
      rm -rf "$dir" ;;
  esac
  if running; then
    step "PostgreSQL '$name' already running"
    admin_url; exit 0
  fi
  mkdir -p "$dir" "$sock"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
  if [ ! -f "$data/PG_VERSION" ]; then
    step "initdb for PostgreSQL '$name' in $data"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/admin-password"
    chmod 600 "$dir/admin-password"; [ "$(id -u)" = 0 ] && chown postgres "$dir/admin-password"
    as_pg "$pg_bin/initdb" -D "$data" -U postgres --auth=scram-sha-256 \
      --pwfile="$dir/admin-password" -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi
  port=${port_arg:-$(cat "$dir/port" 2>/dev/null || true)}
  if [ -z "$port" ]; then
    if [ "$name" = dev ]; then port=55432; else port=$(free_port); fi
  fi
  echo "$port" > "$dir/port"
  # Pods on the local node reach this server at the node bridge's address
  # (10.244.0.1, see tests/control-plane/README.md): listen there too when
  # the bridge exists, and accept password logins from the pod range.
  listen=127.0.0.1
  if ip -4 addr show dev chorus0 2>/dev/null | grep -q 'inet 10.244.0.1/'; then listen="$listen,10.244.0.1"; fi
  hba=$data/pg_hba.conf
  if ! as_pg grep -q '10.244.0.0/16' "$hba"; then
    echo "host all all 10.244.0.0/16 scram-sha-256" | as_pg tee -a "$hba" >/dev/null
  fi
  opts="-c listen_addresses=$listen -c port=$port -c unix_socket_directories=$sock -c max_connections=500"
  case $name in
    test*) opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off" ;;
  esac
  step "starting PostgreSQL '$name' on $listen port $port"
  as_pg "$pg_bin/pg_ctl" -D "$data" -l "$dir/server.log" -o "$opts" -w -t 60 start >/dev/null \
    || { tail -n 20 "$dir/server.log" >&2; die "PostgreSQL did not start; log: $dir/server.log"; }
  admin_url
  ;;
down)
  if stop; then step "PostgreSQL '$name' stopped"; else step "PostgreSQL '$name' not running"; fi
  ;;
purge)
  # Stops a test* server and deletes its data (a bench's databases).
  case $name in test*) ;; *) die "purge only deletes test* servers" ;; esac
  stop || true
  rm -rf "$dir"
  step "PostgreSQL '$name' stopped and deleted"
  ;;
pid)
  # The postmaster's pid (empty when it is not running).
  running && server_pid
  ;;
status)
  if running; then echo "running: $(admin_url)"; else echo "not running"; exit 1; fi
  ;;
url)
  running || die "PostgreSQL '$name' is not running; start it with: make db-up"
  admin_url
  ;;
*) die "usage: db.sh up|down|purge|pid|status|url [NAME] [PORT]" ;;
esac
