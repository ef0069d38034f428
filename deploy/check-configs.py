#!/usr/bin/env python3
"""Checks a rendered overlay the way its pods would start, without a cluster.

For every `connector` container in a Deployment or DaemonSet of the rendered
manifests (one multi-document YAML file), this rebuilds the container's
command line and environment from the manifests themselves (args, env values,
configMapKeyRef values from the rendered ConfigMaps, fieldRef values faked),
writes the TOML file it mounts with `--config` from the rendered ConfigMap,
replaces the in-pod paths of certificates, keys, tokens and sockets with
`connector dev-pki` output and a temporary directory, and runs
`connector server|agent ... --check-config FILE`.

For a kube-apiserver container it checks that --egress-selector-config-file
names a mounted EgressSelectorConfiguration whose `cluster` selection dials
the Unix socket the connector sidecar serves with the matching protocol, in a
volume both containers mount.

Usage: check-configs.py RENDERED.yaml PKI_DIR WORK_DIR CONNECTOR_BIN
Prints one line per check; exits 1 if any failed.
"""

import json
import os
import re
import subprocess
import sys
import tomllib

import yaml

# In-pod file -> file name in the `connector dev-pki` directory.
PKI_FILES = {
    "/etc/connector/server/tls.crt": "server.pem",
    "/etc/connector/server/tls.key": "server-key.pem",
    "/etc/connector/tokens/tokens": "tokens",
    "/etc/connector/agents-ca/ca.crt": "ca.pem",
    "/etc/connector/ca/ca.crt": "ca.pem",
    "/etc/connector/token/token": "node-a.token",
    "/etc/connector/tls/tls.crt": "node-a.pem",
    "/etc/connector/tls/tls.key": "node-a-key.pem",
    "/etc/connector/kubeconfig/kubeconfig": "kubeconfig",
    # The projected ServiceAccount token (components/serviceaccount-token).
    "/var/run/secrets/connector/token": "node-a.token",
}
SOCKET_DIR = "/etc/kubernetes/connector/"
# Values of the downward API in the fake pod.
FIELD_REFS = {
    "metadata.name": "pod-0",
    "spec.nodeName": "node-a",
    "status.hostIP": "127.0.0.1",
    "status.podIP": "127.0.0.2",
}


def substitute(text, pki, sockets):
    for pod_path, name in PKI_FILES.items():
        text = text.replace(pod_path, os.path.join(pki, name))
    return text.replace(SOCKET_DIR, sockets + "/")


def expand_vars(text, env):
    # Kubernetes' $(VAR) expansion in args and env values.
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def mounted_file(container, volumes, configmaps, path):
    """The ConfigMap key mounted at `path`, as (configmap name, key, text)."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            source = volumes[mount["name"]]
            if "configMap" not in source:
                raise ValueError(f"{path} is mounted from {mount['name']}, not a ConfigMap")
            name = source["configMap"]["name"]
            key = path[len(prefix):]
            if name not in configmaps or key not in configmaps[name].get("data", {}):
                raise ValueError(f"{path}: ConfigMap {name} has no key {key}")
            return name, key, configmaps[name]["data"][key]
    raise ValueError(f"{path} is not inside any volume mount")


def container_env(container, configmaps):
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_vars(item["value"], env)
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = FIELD_REFS[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise ValueError(f"env {item['name']}: unsupported source {item['valueFrom']}")
    return env


def check_connector(workload, container, volumes, configmaps, pki, work, binary):
    env = container_env(container, configmaps)
    args = [expand_vars(a, env) for a in container.get("args", [])]
    command, rest = args[0], args[1:]
    config = None
    flags = []
    for arg in rest:
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            flags.append(substitute(arg, pki, os.path.join(work, "sockets")))
    if config is None:
        raise ValueError("no --config=FILE in args")
    cm, key, text = mounted_file(container, volumes, configmaps, config)
    tomllib.loads(text)  # plain TOML first, for a clear error
    sockets = os.path.join(work, "sockets")
    os.makedirs(sockets, exist_ok=True)
    checked = os.path.join(work, f"{workload}-{key}")
    with open(checked, "w") as f:
        f.write(substitute(text, pki, sockets))
    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith("CONNECTOR_") and k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    run_env.update(env)
    argv = [binary, command, *flags, "--check-config", checked]
    result = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=60)
    shown = " ".join(a.replace(pki + "/", "PKI/").replace(work + "/", "") for a in argv[1:])
    if result.returncode != 0:
        raise ValueError(f"`connector {shown}` failed:\n{result.stdout}{result.stderr}")
    # What the pod would run, for smoke.py: the same flags with --config.
    with open(os.path.join(work, f"{workload}.run.json"), "w") as f:
        json.dump({"argv": [binary, command, *flags, "--config", checked], "env": env}, f)
    return f"ConfigMap {cm}/{key}: connector {shown}", tomllib.loads(text)


def check_apiserver(container, volumes, configmaps, sidecar_settings, sidecar_mounts):
    flag = "--egress-selector-config-file="
    paths = [a[len(flag):] for a in container.get("args", []) if a.startswith(flag)]
    if len(paths) != 1:
        raise ValueError(f"kube-apiserver needs exactly one {flag}FILE")
    cm, key, text = mounted_file(container, volumes, configmaps, paths[0])
    doc = yaml.safe_load(text)
    if doc.get("kind") != "EgressSelectorConfiguration" or doc.get("apiVersion") != "apiserver.k8s.io/v1beta1":
        raise ValueError(f"{cm}/{key} is not an apiserver.k8s.io/v1beta1 EgressSelectorConfiguration")
    selections = {s["name"]: s["connection"] for s in doc["egressSelections"]}
    unknown = set(selections) - {"cluster", "controlplane", "etcd"}
    if unknown or "cluster" not in selections:
        raise ValueError(f"{cm}/{key}: selections {sorted(selections)}: need `cluster`, allowed cluster/controlplane/etcd")
    connection = selections["cluster"]
    uds = connection["transport"]["uds"]["udsName"]
    wanted = {"HTTPConnect": "connect-uds", "GRPC": "grpc-uds"}[connection["proxyProtocol"]]
    served = sidecar_settings.get("server", {}).get(wanted)
    if served != uds:
        raise ValueError(f"{cm}/{key}: {connection['proxyProtocol']} dials {uds}, but the sidecar's {wanted} is {served!r}")
    socket_dir = os.path.dirname(uds) + "/"
    def volume_at(mounts):
        return {m["name"] for m in mounts if socket_dir.startswith(m["mountPath"].rstrip("/") + "/")}
    shared = volume_at(container.get("volumeMounts", [])) & volume_at(sidecar_mounts)
    if not any("emptyDir" in volumes[v] for v in shared):
        raise ValueError(f"socket {uds} is not in an emptyDir both containers mount")
    return f"ConfigMap {cm}/{key}: {connection['proxyProtocol']} over {uds}, served by the sidecar, shared emptyDir"


def main():
    rendered, pki, work, binary = sys.argv[1:5]
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    ok = failed = 0
    for doc in docs:
        if doc["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        workload = f"{doc['kind']}/{doc['metadata']['name']}"
        sidecar = None
        for container in spec["containers"]:
            if container["name"] != "connector":
                continue
            try:
                line, settings = check_connector(
                    doc["metadata"]["name"], container, volumes, configmaps, pki, work, binary)
                sidecar = (settings, container.get("volumeMounts", []))
                print(f"  ok    {workload}: {line}")
                ok += 1
            except (ValueError, KeyError, tomllib.TOMLDecodeError, subprocess.TimeoutExpired) as e:
                print(f"  FAIL  {workload} container connector: {e}")
                failed += 1
        for container in spec["containers"]:
            if container["name"] != "kube-apiserver":
                continue
            try:
                if sidecar is None:
                    raise ValueError("no connector sidecar in the pod that passed its check")
                print(f"  ok    {workload}: {check_apiserver(container, volumes, configmaps, *sidecar)}")
                ok += 1
            except (ValueError, KeyError, TypeError) as e:
                print(f"  FAIL  {workload} container kube-apiserver: {e}")
                failed += 1
    print(f"CHECKS {ok} {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
