#!/usr/bin/env bash
# Install Azurite (Microsoft's Azure Storage emulator, npm package `azurite`) into .tools/ so the
# blob tests run against a real blob service. Idempotent: does nothing when the pinned version is
# there. Without npm it warns and exits 0 (the tests then skip), except in CI, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.35.0
PREFIX=.tools
if [ "$(node -p "require('./$PREFIX/node_modules/azurite/package.json').version" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "setup_azurite: npm not found; install Node.js >= 18 to run the Azure Blob tests" >&2
    [ -z "${CI:-}" ] || exit 1
    exit 0
fi
npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "azurite@$VERSION"
