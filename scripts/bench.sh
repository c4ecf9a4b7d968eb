#!/usr/bin/env bash
# `make bench`: every benchmark, each printing ratios against a baseline measured in the same run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export HF_HUB_OFFLINE=1 PYTHONPATH="$root/operator:$root/worker:$root/devcluster:$root/tests"
py=.venv/bin/python
for bench in cluster_start node_agent training_jobs worker_throughput; do
  echo "==> bench/$bench.py"
  "$py" "bench/$bench.py"
done

# Serving needs a trained adapter and a serving Deployment: the demo leaves both on its cluster.
echo "==> make demo (set-up for bench/serving.py)"
"$py" -m loraplane_devcluster demo >/dev/null
eval "$("$py" -m loraplane_devcluster env)"
adapter_path=$(kubectl get ltj tiny-quotes -n demo -o jsonpath='{.status.adapter.path}')
cache=${LORAPLANE_CACHE:-$HOME/.cache/loraplane}
echo "==> bench/serving.py"
"$py" bench/serving.py --kubeconfig "$KUBECONFIG" --namespace demo --volume "$cache/demo/demo/loraplane-tiny" \
  --adapter-path "$adapter_path"
echo "==> bench/serving_scale.py"
"$py" bench/serving_scale.py --kubeconfig "$KUBECONFIG" --namespace demo --adapter-path "$adapter_path"
"$py" -m loraplane_devcluster down
