# The test Kubernetes control plane (hack/k8s, tests/cluster): see docs/testing.md.
# Test infrastructure only; nothing here is part of jobgate itself.
CLUSTER_DIR ?= .jobgate/cluster

.PHONY: k8s-bins cluster-up cluster-down cluster-status

## make k8s-bins: build (or reuse) etcd, kube-*, kubectl and helm in ~/.cache/jobgate/k8s/
k8s-bins: $(STAMP)
	bash hack/k8s/build.sh

## make cluster-up: start the test control plane in the background; then `. .jobgate/cluster/env`
cluster-up: k8s-bins
	$(PY) -m tests.cluster up --dir $(CLUSTER_DIR)

## make cluster-down: stop it and remove everything it started
cluster-down: $(STAMP)
	$(PY) -m tests.cluster down --dir $(CLUSTER_DIR)

cluster-status: $(STAMP)
	$(PY) -m tests.cluster status --dir $(CLUSTER_DIR)
