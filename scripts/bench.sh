#!/usr/bin/env bash
# `make bench`: every benchmark, each printing ratios against a baseline measured in the same run.
# Each starts (and stops) local clusters of its own, whatever $KUBECONFIG says. Only
# LORAPLANE_KUBECONFIG points it elsewhere: then only the API write latencies of bench/cluster_start.py
# run, against that cluster, after saying which one it is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export HF_HUB_OFFLINE=1 PYTHONPATH="$root/operator:$root/worker:$root/devcluster:$root/tests"
unset KUBECONFIG  # nothing started below may fall back to the user's cluster
py=.venv/bin/python
echo "==> cluster: $("$py" -m loraplane_devcluster.testing)"
if [ -n "${LORAPLANE_KUBECONFIG:-}" ] && [ "$LORAPLANE_KUBECONFIG" != local ]; then
  "$py" bench/cluster_start.py --kubeconfig "$LORAPLANE_KUBECONFIG"
  exit 0
fi
for bench in cluster_start node_agent training_jobs worker_throughput distributed evaluation storage serving_catalogue; do
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
