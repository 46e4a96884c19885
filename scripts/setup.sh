#!/usr/bin/env bash
# Brings a machine to what Continuity's daemon and tests need, and does nothing that is already
# done: Debian packages (as root), npm dependencies, and the local PostgreSQL, MariaDB and Redis
# running on their standard ports. Both quick-start commands (npm start, npm test) call it first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages: command -> package ------------------------------------------------------
declare -A need=(
  [psql]=postgresql-client [pg_dump]=postgresql-client [redis-server]=redis-server [redis-cli]=redis-tools
  [mariadbd]=mariadb-server [mysqladmin]=mariadb-client [sshd]=openssh-server [ssh-keygen]=openssh-client
  [ping]=iputils-ping [promtool]=prometheus [openssl]=openssl [ip]=iproute2 [runuser]=util-linux [haproxy]=haproxy
  [prometheus-alertmanager]=prometheus-alertmanager [amtool]=prometheus-alertmanager [chromium]=chromium
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || missing+=(postgresql)
fresh_pg=0; fresh_mariadb=0
[[ " ${missing[*]-} " == *" postgresql "* ]] && fresh_pg=1
[[ " ${missing[*]-} " == *" mariadb-server "* ]] && fresh_mariadb=1
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]}; run as root, or: apt-get install ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Package scripts must not try to start services through an init system that is not there.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

# --- services ---------------------------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    ver=$(basename "$(dirname "$pg_bin")")
    [ -d "/etc/postgresql/$ver/main" ] || pg_createcluster "$ver" main >/dev/null
    if [ "$fresh_pg" = 1 ]; then
      # A cluster this script created is a development one: trust on loopback, like the tests expect.
      hba="/etc/postgresql/$ver/main/pg_hba.conf"
      printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' > "$hba"
    fi
    say "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/continuity-setup.log
  fi
  if ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
    say "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    for _ in $(seq 1 60); do mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 0.5; done
    if [ "$fresh_mariadb" = 1 ]; then
      # Development database this script installed: root on loopback without a password, as the tests expect.
      mariadb -u root -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); CREATE DATABASE IF NOT EXISTS test;" || true
    fi
  fi
  for _ in $(seq 1 40); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.25; done
  mkdir -p /run/sshd
fi

# --- npm dependencies -------------------------------------------------------------------------
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
