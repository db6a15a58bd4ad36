#!/usr/bin/env bash
# Make the headless browser of scripts/check_book.py available: Debian's chromium package,
# installed with apt-get when /usr/bin/chromium is missing and apt-get can be used.
# Usage: scripts/ensure-chromium.sh
set -euo pipefail
browser=/usr/bin/chromium

if [ -x "$browser" ]; then
  echo "Chromium: found at $browser"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Chromium: installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  test -x "$browser"
else
  echo "Chromium is missing at $browser and apt-get cannot be used here." >&2
  echo "Install the package chromium (Debian) or chromium-browser, as root." >&2
  exit 1
fi
