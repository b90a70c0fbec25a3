#!/usr/bin/env bash
# Builds the test control plane's binaries from Go modules with the machine's Go:
#   etcd                                   (wrapper module requiring go.etcd.io/etcd/server/v3)
#   kube-apiserver, kube-controller-manager,
#   kube-scheduler, kubectl                (wrapper module requiring k8s.io/kubernetes)
#   kubelet, kube-proxy                    (the same wrapper module: the test node)
#   containerd, containerd-shim-runc-v2,
#   ctr                                    (go install github.com/containerd/containerd/v2/...)
#   kube-router                            (go install github.com/cloudnativelabs/kube-router/v2/...)
#   helm                                   (go install helm.sh/helm/v3/cmd/helm@version)
#   monitoring-crds.yaml                   (controller-gen on prometheus-operator's API
#                                           types: the ServiceMonitor and PrometheusRule
#                                           CRDs the chart's dry-run tests install)
# Versions come from hack/k8s/versions.env. Test infrastructure only: nothing here ships.
#
# Usage: hack/k8s/build.sh [--check | --print-dir]
#   (none)       build whatever is missing
#   --print-dir  build whatever is missing, then print the binary directory on stdout
#   --check      exit 0 when everything is built, 1 otherwise; never builds
#
# Output: ${JOBGATE_CACHE_DIR:-~/.cache/jobgate}/k8s/<KUBERNETES_VERSION>/
# Go caches: ${JOBGATE_CACHE_DIR}/go/{mod,build}, so a fresh clone reuses them.
#
# Idempotent and safe to interrupt: each group of binaries is built into a temp directory
# and renamed into place; a stamp file written last marks the group complete. A lock file
# keeps two builds (make and pytest, two pytest sessions) from running at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

mode=${1:-build}
case "$mode" in
build | --print-dir | --check) ;;
*)
	echo "usage: $0 [--check | --print-dir]" >&2
	exit 2
	;;
esac

cache_root=${JOBGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jobgate}
k8s_root=$cache_root/k8s
out=$k8s_root/$KUBERNETES_VERSION
groups=(etcd kube node containerd netpol helm crds)

binaries_of() {
	case "$1" in
	etcd) echo etcd ;;
	kube) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
	node) echo kubelet kube-proxy ;;
	containerd) echo containerd containerd-shim-runc-v2 ctr ;;
	netpol) echo kube-router ;;
	helm) echo helm ;;
	crds) echo monitoring-crds.yaml ;;
	esac
}

version_of() {
	case "$1" in
	etcd) echo "$ETCD_VERSION" ;;
	kube | node) echo "$KUBERNETES_VERSION" ;;
	containerd) echo "$CONTAINERD_VERSION" ;;
	netpol) echo "$KUBE_ROUTER_VERSION" ;;
	helm) echo "$HELM_VERSION" ;;
	crds) echo "$PROMETHEUS_OPERATOR_VERSION+$CONTROLLER_TOOLS_VERSION" ;;
	esac
}

# A group is complete when its stamp names the pinned version and every file is there.
is_complete() {
	local group=$1 bin
	[[ "$(cat "$out/.stamp-$group" 2>/dev/null)" == "$(version_of "$group")" ]] || return 1
	for bin in $(binaries_of "$group"); do
		[[ -f "$out/$bin" ]] || return 1
	done
}

all_complete() {
	local group
	for group in "${groups[@]}"; do
		is_complete "$group" || return 1
	done
}

if [[ "$mode" == --check ]]; then
	all_complete
	exit
fi

finish() {
	if [[ "$mode" == --print-dir ]]; then
		echo "$out"
	fi
	exit 0
}

# Fast path without the lock: a warm cache costs one stat per binary.
all_complete && finish

mkdir -p "$out" "$k8s_root/src"
log=$k8s_root/build.log
# Everything the build says also lands in build.log (pytest captures the fixture's stderr).
exec 2> >(tee -a "$log" >&2)

exec 9>"$k8s_root/.build.lock"
lock_timeout=${JOBGATE_K8S_BUILD_LOCK_TIMEOUT:-5400}
if ! flock -n 9; then
	echo "k8s build: another build holds $k8s_root/.build.lock; waiting up to ${lock_timeout}s" >&2
	flock -w "$lock_timeout" 9 || {
		echo "k8s build: lock not released in ${lock_timeout}s" >&2
		exit 1
	}
fi
# The other holder may have finished the work while we waited.
all_complete && finish

export GOMODCACHE=$cache_root/go/mod
export GOCACHE=$cache_root/go/build
export GOTOOLCHAIN=local
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0
go_version=$(go env GOVERSION)
go_directive=${go_version#go}
cold_gocache=no
if [[ ! -d "$GOCACHE" ]] || [[ -z "$(ls -A "$GOCACHE" 2>/dev/null)" ]]; then
	cold_gocache=yes
fi

# Leftovers of interrupted builds: safe to remove, we hold the lock.
rm -rf "$out"/.tmp-*
tmp=$(mktemp -d "$out/.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Path of a module version's go.mod in the module cache (downloads it if needed).
gomod_of() {
	(cd "$tmp" && go mod download -json "$1") |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'
}

write_wrapper_header() { # module-name
	printf 'module %s\n\ngo %s\n\n' "$1" "$go_directive"
}

build_etcd() {
	local src=$k8s_root/src/etcd-$ETCD_VERSION
	mkdir -p "$src"
	{
		write_wrapper_header jobgate.test/etcd-build
		printf 'require go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION"
	} >"$src/go.mod"
	# The module root of go.etcd.io/etcd/server/v3 is etcd's main package.
	(cd "$src" && go build -mod=mod -trimpath \
		-ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
		-o "$tmp/etcd" go.etcd.io/etcd/server/v3)
}

# The wrapper module requiring k8s.io/kubernetes, written once per version.
kube_wrapper() {
	local src=$k8s_root/src/kubernetes-$KUBERNETES_VERSION
	local staging=v0.${KUBERNETES_VERSION#v1.}
	local upstream_gomod
	upstream_gomod=$(gomod_of "k8s.io/kubernetes@$KUBERNETES_VERSION")
	[[ -f "$upstream_gomod" ]] || {
		echo "k8s build: no go.mod for k8s.io/kubernetes@$KUBERNETES_VERSION" >&2
		return 1
	}
	mkdir -p "$src"
	# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
	# ./staging/src/...; a consumer must replace each with the published v0.N.P itself.
	# The list comes from the release's own go.mod, so it is never stale.
	{
		write_wrapper_header jobgate.test/kubernetes-build
		printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$KUBERNETES_VERSION"
		awk -v ver="$staging" '/=> \.\/staging\/src\// {
			mod = ($1 == "replace") ? $2 : $1
			printf "\t%s => %s %s\n", mod, mod, ver
		}' "$upstream_gomod" | sort -u
		printf ')\n'
	} >"$src/go.mod"
	echo "k8s build: $(grep -c '=> k8s.io/' "$src/go.mod") staging replace lines at $staging" >&2
	echo "$src"
}

# go build of k8s.io/kubernetes commands with the release's version stamped in.
build_kube_commands() { # package...
	local src minor=${KUBERNETES_VERSION#v1.}
	minor=${minor%%.*}
	src=$(kube_wrapper)
	local ldflags="-s -w" pkg build_date
	build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
		ldflags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
	done
	# One go build for all of a group: the shared packages compile once.
	(cd "$src" && go build -mod=mod -trimpath -tags=selinux,notest -ldflags "$ldflags" \
		-o "$tmp/" "$@")
}

build_kube() {
	build_kube_commands k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubectl
}

# The test node's kubelet and kube-proxy; the packages they share with the control plane
# come from the warm GOCACHE.
build_node() {
	build_kube_commands k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

# containerd 2.x, static (CGO off), without the snapshotters the test node never uses.
build_containerd() {
	local m=github.com/containerd/containerd/v2
	(cd "$tmp" && GOBIN="$tmp" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
		-ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=modproxy" \
		"$m/cmd/containerd@$CONTAINERD_VERSION" \
		"$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
		"$m/cmd/ctr@$CONTAINERD_VERSION")
}

# kube-router's NetworkPolicy controller (iptables + ipset) enforces the default-deny
# policy on the test node. SIG Network's kube-network-policies needs the kernel's nft
# queue expression (CONFIG_NFT_QUEUE), which the CI kernel lacks.
build_netpol() {
	local m=github.com/cloudnativelabs/kube-router/v2
	(cd "$tmp" && GOBIN="$tmp" go install -trimpath \
		-ldflags "-s -w -X $m/pkg/version.Version=$KUBE_ROUTER_VERSION" \
		"$m/cmd/kube-router@$KUBE_ROUTER_VERSION")
}

build_helm() {
	# Helm derives the Kubernetes version it assumes from its client-go (v0.N.P -> 1.N).
	local helm_gomod client_go minor
	helm_gomod=$(gomod_of "helm.sh/helm/v3@$HELM_VERSION")
	client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$helm_gomod")
	minor=$(echo "$client_go" | cut -d. -f2)
	local v=helm.sh/helm/v3/internal/version
	local ldflags="-s -w -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean"
	ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
	ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
	ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
	ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
	# helm.sh/helm/v3 has no replace lines, so go install pkg@version works as is.
	(cd "$tmp" && GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

# The monitoring CRDs, generated from the API types' Go module (the operator's own module,
# with the YAML in it, is not on the module proxy here): what the API server then
# validates a ServiceMonitor or PrometheusRule against is the operator's real schema.
build_crds() {
	(cd "$tmp" && GOBIN="$tmp/bin" go install -trimpath \
		"sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION")
	local types=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
	mkdir -p "$tmp/mod" "$tmp/crds"
	write_wrapper_header jobgate-crds >"$tmp/mod/go.mod"
	printf 'require %s %s\n' "$types" "$PROMETHEUS_OPERATOR_VERSION" >>"$tmp/mod/go.mod"
	printf 'package crds\n\nimport _ "%s/v1"\n' "$types" >"$tmp/mod/crds.go"
	(cd "$tmp/mod" && go mod tidy &&
		"$tmp/bin/controller-gen" crd paths="$types/v1" output:crd:dir="$tmp/crds")
	local kind
	for kind in servicemonitors prometheusrules; do
		cat "$tmp/crds/monitoring.coreos.com_$kind.yaml"
	done >"$tmp/monitoring-crds.yaml"
}

echo "k8s build: $go_version, $(nproc) cores, into $out (cold GOCACHE: $cold_gocache)" >&2
summary=""
total_start=$SECONDS
for group in "${groups[@]}"; do
	is_complete "$group" && continue
	echo "k8s build: building $group $(version_of "$group") ($(date -u +%H:%M:%S))" >&2
	start=$SECONDS
	rm -rf "${tmp:?}"/*
	"build_$group"
	for bin in $(binaries_of "$group"); do
		mv -f "$tmp/$bin" "$out/$bin" # rename: atomic on the same filesystem
	done
	echo "$(version_of "$group")" >"$tmp/stamp"
	mv -f "$tmp/stamp" "$out/.stamp-$group"
	elapsed=$((SECONDS - start))
	echo "k8s build: $group done in ${elapsed}s" >&2
	summary+=" $group=${elapsed}s"
done
total=$((SECONDS - total_start))
if [[ -n "$summary" ]]; then
	line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $go_version $(nproc) cores, cold GOCACHE: $cold_gocache:$summary total=${total}s"
	echo "$line" >>"$out/build-time.txt"
	echo "k8s build: $line" >&2
fi
finish
