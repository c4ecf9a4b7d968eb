#!/usr/bin/env bash
# Makes (or reuses) the project's Python environment: operator, worker, local vLLM and dev tools
# in one venv, cached outside the checkout and keyed by a hash of requirements/*.txt, so a fresh
# clone reuses it and a changed pin builds a new one. Links it as .venv in the checkout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
python=${PYTHON:-python3}
key=$( (cd "$root" && cat requirements/*.txt; "$python" --version) | sha256sum | cut -c1-16)
venv="$cache/venvs/py-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "[setup-venv] building $venv (first run downloads several GB: torch, vLLM)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip
  "${pip[@]}" install -r "$root/requirements/operator.txt" -r "$root/requirements/worker.txt" \
    -r "$root/requirements/serving.txt" -r "$root/requirements/dev.txt"
  "${pip[@]}" install --no-deps -r "$root/requirements/vllm.txt"
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$root/.venv"
echo "$venv"
