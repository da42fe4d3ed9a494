#!/usr/bin/env bash
# Create .venv and install the pinned environment. Idempotent: a second run installs nothing.
# torch comes first (the CPU wheel, 2.13.0) so that nothing later pulls a multi-GB CUDA build.
# GPU users: set TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.installed-$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install --quiet $TORCH_SPEC
"${pip[@]}" install --quiet -r requirements.lock
"${pip[@]}" install --quiet --no-deps -e .
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "environment ready in $VENV"
