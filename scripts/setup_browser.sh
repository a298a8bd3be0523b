#!/usr/bin/env bash
# Install Debian's chromium for the web-page tests (tests/test_serve_page.py drives it with
# playwright; no browser is downloaded by playwright itself). The package comes from the archive
# this machine's own apt sources name. Idempotent: does nothing when /usr/bin/chromium is there.
# Without apt-get or root it warns and exits 0 (the page test then skips), except in CI, where it fails.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
fail() {
    echo "setup_browser: $1; the web-page test will skip" >&2
    [ -z "${CI:-}" ] || exit 1
    exit 0
}
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found (install Debian's chromium at $CHROMIUM)"
[ "$(id -u)" -eq 0 ] || fail "not root: run 'apt-get install chromium' as root"
echo "installing chromium with apt"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
[ -x "$CHROMIUM" ] || fail "apt installed chromium but $CHROMIUM is missing"
