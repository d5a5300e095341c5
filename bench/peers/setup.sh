#!/usr/bin/env bash
# Create or update the peers' virtualenv at bench/.venv-peers and print its
# python path on stdout (everything else goes to stderr).
# Idempotent: pip runs only when requirements.txt differs from the stamp file.
# Environment: PYTHON (default python3), PEERS_VENV (default bench/.venv-peers).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-$here/../.venv-peers}"
req="$here/requirements.txt"
stamp="$venv/.requirements.stamp"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating venv $venv" >&2
    "$py" -m venv "$venv" >&2
fi
# Keep the venv out of `git status` without touching the repo's .gitignore.
[ -f "$venv/.gitignore" ] || echo '*' > "$venv/.gitignore"

if [ -f "$stamp" ] && cmp -s "$stamp" "$req"; then
    echo "setup: venv up to date ($stamp)" >&2
else
    echo "setup: installing $req" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
    cp "$req" "$stamp"
fi
cd "$venv" && echo "$(pwd -P)/bin/python"
