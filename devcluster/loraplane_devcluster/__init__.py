"""A local Kubernetes control plane for loraplane's tests and demo.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as plain processes on
127.0.0.1 out of one run directory; a node agent (``loraplane_devcluster.nodeagent``) plays the
kubelet of one Node. This is test and demo infrastructure: the product runs on any real cluster
and never imports this package.

Entry points: ``python -m loraplane_devcluster up|down|status|env`` and
:func:`loraplane_devcluster.controlplane.up` / :func:`~loraplane_devcluster.controlplane.down`.
"""
