#!/usr/bin/env bash
# Builds the real kube-apiserver, kubectl and etcd that the Kubernetes
# end-to-end suite runs, from the Go module proxy at the versions in
# versions.env, into OUT_DIR (default: <cargo target dir>/kubernetes/bin).
#
# Cold, this takes about 16 minutes on 2 cores (kube-apiserver and kubectl)
# plus 2 minutes (etcd); Go's build cache ($(go env GOCACHE)) makes later
# builds take seconds, even when the output directory is gone.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
out="${1:-${CARGO_TARGET_DIR:-$here/../../../target}/kubernetes/bin}"

# The wrapper modules must be the ones tools/update.sh generates from versions.env.
check() { # FILE REQUIREMENT
  if ! grep -Eq "^(require |	)$2( |$)" "$1"; then
    echo "build.sh: $1 does not require $2 (versions.env); run tools/update.sh" >&2
    exit 1
  fi
}
check "$here/tools/kube/go.mod" "k8s.io/kubernetes $KUBERNETES_VERSION"
check "$here/tools/etcd/go.mod" "go.etcd.io/etcd/server/v3 $ETCD_VERSION"

mkdir -p "$out"
export CGO_ENABLED=0
echo "kubernetes: building kube-apiserver, kubectl $KUBERNETES_VERSION and etcd $ETCD_VERSION into $out"
start=$SECONDS
# What `kubectl version` and kube-apiserver's /version report (the release
# build stamps the same variables), without debug information; only the link
# step depends on these flags.
minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
stamp="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
(cd "$here/tools/kube" &&
  go build -ldflags "$stamp" -o "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
  go build -ldflags "$stamp" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl)
(cd "$here/tools/etcd" && go build -o "$out/etcd" .)
echo "kubernetes: built in $((SECONDS - start)) s"
