"""Test infrastructure: a real Kubernetes control plane for jobgate's test suite.

Nothing in this package is part of the product. It starts etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on 127.0.0.1 (binaries built from Go modules by
hack/k8s/build.sh) plus a *test node agent* that runs the pods bound to its node as local
processes, so Kubernetes Jobs really run. See docs/testing.md.
"""
