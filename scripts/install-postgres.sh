#!/bin/sh
# The PostgreSQL server that tests/test_tune_postgres.py starts a throw-away cluster of:
# Debian's `postgresql` package, installed with apt-get when it is missing and this runs as
# root. Anywhere else this only says so, and that one test is skipped. Never fails the install.
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's postgresql package (for the PostgreSQL sweep test)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; then
    exit 0
  fi
fi
echo "note: no PostgreSQL server (initdb) could be installed; its sweep test will be skipped" >&2
exit 0
