#!/usr/bin/env bash
# Create or update the JetStream streams and consumers of SPEC §4, idempotently.
# Arguments go to `jetsaga setup` (e.g. --replicas 3); NATS_URL says which server.
# Uses the project's .venv when there is one, otherwise `jetsaga` from PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "$root/.venv/bin/jetsaga" ]]; then
    jetsaga="$root/.venv/bin/jetsaga"
elif command -v jetsaga >/dev/null 2>&1; then
    jetsaga="$(command -v jetsaga)"
else
    echo "jetstream-setup: no jetsaga found; run 'make install' first" >&2
    exit 127
fi
exec "$jetsaga" setup "$@"
