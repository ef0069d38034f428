#!/usr/bin/env bash
# Renders every overlay under deploy/ and checks it offline:
#   1. every rendered manifest against the Kubernetes OpenAPI schemas
#      (kubernetes-validate, strict: unknown fields are errors), for each
#      version in KUBE_VERSIONS;
#   2. every connector container's TOML ConfigMap plus its args and env with
#      `connector server|agent --check-config`, in-pod certificate, token and
#      socket paths replaced by `connector dev-pki` output (check-configs.py);
#   3. the kube-apiserver's EgressSelectorConfiguration against the socket and
#      protocol its connector sidecar serves;
#   4. a smoke run (smoke.py): the rendered HTTP CONNECT server and two agents
#      (DaemonSet + token, Deployment + client certificate) as local processes
#      on loopback, one request tunnelled over the Unix socket, /readyz and
#      metrics checked.
#
# Installs what it needs under ${CARGO_TARGET_DIR:-target}/deploy-tools:
# kustomize (go install, needs Go >= 1.26 for the pinned version) and a venv
# with kubernetes-validate. Uses $CONNECTOR_BIN if set, else builds the CLI.
#
#   deploy/validate.sh            # from the repository root or anywhere
#   KUBE_VERSIONS="1.33.0 1.37.0" deploy/validate.sh
set -euo pipefail

KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
KUBERNETES_VALIDATE_VERSION=${KUBERNETES_VALIDATE_VERSION:-1.37.0}
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.34.0 1.37.0"}

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$DEPLOY")
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
TOOLS=$TARGET/deploy-tools

log() { echo "validate: $*" >&2; }

# kustomize
KUSTOMIZE=$TOOLS/bin/kustomize
if [[ ! -x $KUSTOMIZE ]] || [[ $("$KUSTOMIZE" version 2>/dev/null) != "$KUSTOMIZE_VERSION" ]]; then
    log "installing kustomize $KUSTOMIZE_VERSION"
    GOBIN=$TOOLS/bin GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

# kubernetes-validate (ships the schemas: no network when validating)
VENV=$TOOLS/venv
if ! "$VENV/bin/python" -c "import kubernetes_validate, yaml" 2>/dev/null ||
    [[ $("$VENV/bin/kubernetes-validate" --version 2>/dev/null | awk '{print $NF}') != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# connector
if [[ -z ${CONNECTOR_BIN:-} ]]; then
    log "building connector (cargo build -p connector-cli)"
    (cd "$ROOT" && cargo build --quiet -p connector-cli)
    CONNECTOR_BIN=$TARGET/debug/connector
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$CONNECTOR_BIN" dev-pki --out "$WORK/pki" --server-name connector.tenant-a.example.com --node node-a >/dev/null
# The server's kubeconfig (Secret connector-kubeconfig): an apiserver on a
# loopback port nothing listens on. --check-config reads and checks it; in the
# smoke run the server's Lease rounds fail (logged) and it keeps server-count.
cat >"$WORK/pki/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: workload
  cluster:
    server: https://127.0.0.1:1
    certificate-authority: $WORK/pki/ca.pem
users:
- name: connector-server
  user:
    client-certificate: $WORK/pki/node-a.pem
    client-key: $WORK/pki/node-a-key.pem
contexts:
- name: workload
  context:
    cluster: workload
    user: connector-server
current-context: workload
EOF

overlays=0 manifests=0 validations=0 checks=0 failed=0
cd "$DEPLOY"
for overlay in $(find . -path '*/overlays/*' -name kustomization.yaml -printf '%h\n' | sed 's|^\./||' | sort); do
    echo "== $overlay"
    overlays=$((overlays + 1))
    rendered=$WORK/$(echo "$overlay" | tr / _).yaml
    if ! "$KUSTOMIZE" build "$overlay" >"$rendered"; then
        echo "  FAIL  kustomize build $overlay"
        failed=$((failed + 1))
        continue
    fi
    # One file per manifest, so a failure names the manifest.
    split=$WORK/split-$(basename "$rendered" .yaml)
    mkdir -p "$split"
    "$VENV/bin/python" - "$rendered" "$split" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for i, d in enumerate(docs):
    with open(f"{sys.argv[2]}/{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml", "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
EOF
    files=("$split"/*.yaml)
    manifests=$((manifests + ${#files[@]}))
    for version in $KUBE_VERSIONS; do
        for file in "${files[@]}"; do
            validations=$((validations + 1))
            if out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$file" 2>&1); then
                :
            else
                echo "  FAIL  Kubernetes $version schema: $(basename "$file" .yaml)"
                echo "$out" | sed 's/^/        /'
                failed=$((failed + 1))
            fi
        done
        echo "  ok    Kubernetes $version schemas: ${#files[@]} manifests ($(cd "$split" && ls | sed 's/^[0-9]*-//; s/\.yaml$//' | cut -d- -f1 | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}'))"
    done
    checkdir=$WORK/check-$(echo "$overlay" | tr / _)
    mkdir -p "$checkdir"
    if out=$("$VENV/bin/python" "$DEPLOY/check-configs.py" "$rendered" "$WORK/pki" "$checkdir" "$CONNECTOR_BIN"); then
        status=0
    else
        status=1
    fi
    echo "$out" | grep -v '^CHECKS '
    read -r _ ok bad < <(echo "$out" | grep '^CHECKS ' || echo "CHECKS 0 1")
    checks=$((checks + ok + bad))
    failed=$((failed + bad))
    [[ $status == 0 || $bad != 0 ]] || failed=$((failed + 1))
done

# The rendered server (HTTP CONNECT) and agents (DaemonSet with a token, Deployment
# with a client certificate) as local processes on loopback, one tunnelled request.
echo "== smoke: server/overlays/http-connect + agent/overlays/daemonset-token + agent/overlays/mtls"
server_run=$WORK/check-server_overlays_http-connect/kube-apiserver.run.json
agent_runs=("$WORK/check-agent_overlays_daemonset-token/connector-agent.run.json" "$WORK/check-agent_overlays_mtls/connector-agent.run.json")
if [[ -f $server_run && -f ${agent_runs[0]} && -f ${agent_runs[1]} ]]; then
    out=$("$VENV/bin/python" "$DEPLOY/smoke.py" "$server_run" "${agent_runs[@]}") || true
    echo "$out" | grep -v '^CHECKS '
    read -r _ ok bad < <(echo "$out" | grep '^CHECKS ' || echo "CHECKS 0 1")
else
    echo "  FAIL  smoke: a config check above failed"
    ok=0 bad=1
fi
checks=$((checks + ok + bad))
failed=$((failed + bad))

summary="$overlays overlays, $manifests manifests, $validations schema validations (Kubernetes ${KUBE_VERSIONS// /, }), $checks checks (configs, egress selector, smoke run), $failed failed"
if [[ $failed == 0 ]]; then
    echo "deploy: OK: $summary"
else
    echo "deploy: FAILED: $summary"
    exit 1
fi
