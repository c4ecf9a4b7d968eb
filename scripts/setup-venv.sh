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
  # pip's own lines go to a log (scripts/setup.sh reads it for its progress lines), not the terminal.
  log=${SETUP_VENV_LOG:-$cache/venvs/py-$key.log}
  mkdir -p "$(dirname "$log")"
  echo "[setup-venv] building $venv (first run downloads several GB: torch, vLLM; pip's log: $log)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  exec 3>>"$log"
  trap 'echo "[setup-venv] failed; the last lines of $log:" >&2; tail -n 20 "$log" >&2' ERR
  # --progress-bar is an option of `pip install`, not of pip itself: it goes after the command.
  install=("$venv/bin/python" -m pip --disable-pip-version-check install --progress-bar off)
  "${install[@]}" --upgrade pip >&3 2>&1
  "${install[@]}" -r "$root/requirements/operator.txt" -r "$root/requirements/worker.txt" \
    -r "$root/requirements/serving.txt" -r "$root/requirements/dev.txt" >&3 2>&1
  "${install[@]}" --no-deps -r "$root/requirements/vllm.txt" >&3 2>&1
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$root/.venv"
echo "$venv"
