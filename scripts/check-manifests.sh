#!/usr/bin/env bash
# Checks the Kubernetes manifests of deploy/kubernetes offline: renders the base and every overlay
# with `kubectl kustomize`, then validates each rendered object
#   - against the OpenAPI schemas of each Kubernetes version in $K8S_VERSIONS (the Python package
#     kubernetes-validate, which bundles them; strict: an unknown field is an error). 1.30 is the
#     oldest version the manifests are for (native sidecars are on by default since 1.29, the
#     preStop sleep action since 1.30);
#   - a kind the schemas do not know fails, except the custom resources listed in CRD_KINDS
#     below (PodMonitor), which are skipped by the schemas and checked here for the fields the CRD
#     requires, and for pointing at a pod and a port that exist;
#   - beyond the schemas: probes, Services and PodMonitors name ports that exist, the Sentinel
#     sidecar is a native sidecar (restartPolicy: Always) with liveness on /healthz and readiness
#     on /readyz, the hardening (runAsNonRoot, readOnlyRootFilesystem, no capabilities,
#     seccomp RuntimeDefault) is on every container, and terminationGracePeriodSeconds covers
#     Sentinel's drain ([process] shutdown_grace + 3 s, from the sentinel.toml it mounts, which
#     must parse as TOML). With a sentinel binary ($SENTINEL_BIN, else target/debug/sentinel or
#     target/release/sentinel when built), each rendered sentinel.toml also goes through
#     `sentinel check-config`.
# Exits 1 naming every problem found; 0 when all is well. Needs kubectl (scripts/setup.sh fetches
# a pinned one into ~/.cache/sentinel/ when none is on PATH) and the .venv of scripts/setup.sh.
#   scripts/check-manifests.sh [DIR]        DIR: a deploy/kubernetes-like tree (default: the repo's)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="${1:-$repo/deploy/kubernetes}"
versions="${K8S_VERSIONS:-1.30.0 1.33.0}"
python="${PYTHON:-$repo/.venv/bin/python}"

die() { printf 'check-manifests: %s\n' "$*" >&2; exit 1; }

# The kubectl on PATH, else the one scripts/setup.sh fetched (keep the version in step with it).
kubectl_bin="$(command -v kubectl || true)"
kubectl_cached="${XDG_CACHE_HOME:-$HOME/.cache}/sentinel/kubectl-v1.32.4/kubectl"
if [[ -z "$kubectl_bin" && -x "$kubectl_cached" ]]; then
    kubectl_bin="$kubectl_cached"
fi
[[ -n "$kubectl_bin" ]] || die "no kubectl on PATH nor at $kubectl_cached: run scripts/setup.sh"
[[ -x "$python" ]] || die "no $python: run scripts/setup.sh"
"$python" -c 'import kubernetes_validate, yaml' 2>/dev/null ||
    die "$python lacks kubernetes-validate: run scripts/setup.sh"
[[ -d "$root/base" ]] || die "no $root/base"

sentinel_bin="${SENTINEL_BIN:-}"
if [[ -z "$sentinel_bin" ]]; then
    for candidate in "${CARGO_TARGET_DIR:-$repo/target}"/{debug,release}/sentinel; do
        if [[ -x "$candidate" ]]; then
            sentinel_bin="$candidate"
            break
        fi
    done
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

targets=("$root/base")
for dir in "$root"/overlays/*/; do
    [[ -f "$dir/kustomization.yaml" ]] && targets+=("${dir%/}")
done
((${#targets[@]} > 1)) || die "no overlay with a kustomization.yaml under $root/overlays"

failed=0
for target in "${targets[@]}"; do
    name="${target#"$root"/}"
    out="$work/${name//\//_}.yaml"
    if ! "$kubectl_bin" kustomize "$target" >"$out" 2>"$out.err"; then
        printf 'FAIL %s: kubectl kustomize failed:\n' "$name"
        sed 's/^/    /' "$out.err"
        failed=1
        continue
    fi
    if ! SENTINEL_BIN="$sentinel_bin" "$python" - "$name" "$out" "$versions" <<'PY'; then
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

name, path, versions = sys.argv[1], sys.argv[2], sys.argv[3].split()
sentinel_bin = os.environ.get("SENTINEL_BIN", "")
problems = []

# Custom resources kubernetes-validate has no schema for. Each is checked here for what its CRD
# requires (monitoring.coreos.com/v1 PodMonitor: spec.podMetricsEndpoints, each with a port)
# instead of being passed unchecked. Any other kind without a schema is an error.
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}

with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d is not None]
if not docs:
    problems.append("the render is empty")


def ident(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def port_names(pod):
    return {p.get("name") for c in containers(pod) for p in (c.get("ports") or []) if p.get("name")}


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def seconds(text):
    """A humantime duration as Sentinel's config writes them ("30s", "1m", "1m30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+)\s*(ms|min|s|m|h)", text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"cannot read the duration {text!r}")
    return total


# 1. Schemas.
for doc in docs:
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not api or not kind or not (doc.get("metadata") or {}).get("name"):
        problems.append(f"{ident(doc)}: apiVersion, kind and metadata.name are required")
        continue
    if (api, kind) in CRD_KINDS:
        continue
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            problems.append(f"{ident(doc)}: Kubernetes {version} schema: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{ident(doc)}: Kubernetes {version} has no schema for {api} {kind} "
                            f"(a custom resource? list it in CRD_KINDS with its own checks)")
        except kubernetes_validate.VersionNotSupportedError:
            problems.append(f"kubernetes-validate {kubernetes_validate.__version__} does not know "
                            f"Kubernetes {version}")

# 2. What the schemas cannot see.
pods = []  # (ident, labels, pod spec)
configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
for doc in docs:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        template = (doc.get("spec") or {}).get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        selector = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if selector is not None and not matches(selector, labels):
            problems.append(f"{ident(doc)}: spec.selector does not match the pod template's labels")
        pods.append((ident(doc), labels, template.get("spec") or {}))
    elif kind == "Pod":
        labels = (doc.get("metadata") or {}).get("labels") or {}
        pods.append((ident(doc), labels, doc.get("spec") or {}))

for who, _, pod in pods:
    sc = pod.get("securityContext") or {}
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append(f"{who}: securityContext.seccompProfile.type must be RuntimeDefault")
    names = port_names(pod)
    for c in containers(pod):
        cname = f"{who} container {c.get('name')}"
        csc = c.get("securityContext") or {}
        if not (csc.get("runAsNonRoot", sc.get("runAsNonRoot")) is True):
            problems.append(f"{cname}: runAsNonRoot must be true")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cname}: readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cname}: capabilities.drop must hold ALL")
        own = {p.get("name") for p in (c.get("ports") or [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in own:
                problems.append(f"{cname}: {probe} names port {port!r}, which the container lacks")
    sidecars = [c for c in pod.get("initContainers") or [] if c.get("name") == "sentinel"]
    if not sidecars:
        problems.append(f"{who}: no init container named sentinel")
        continue
    s = sidecars[0]
    if s.get("restartPolicy") != "Always":
        problems.append(f"{who}: the sentinel init container needs restartPolicy: Always "
                        f"(a native sidecar)")
    for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = ((s.get(probe) or {}).get("httpGet") or {}).get("path")
        if got != want:
            problems.append(f"{who}: sentinel {probe} must GET {want} (has {got!r})")
    resources = s.get("resources") or {}
    if not resources.get("requests") or not (resources.get("limits") or {}).get("memory"):
        problems.append(f"{who}: sentinel needs resource requests and a memory limit")
    args = s.get("args") or []
    config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else "sentinel.toml"
    mounts = {m["mountPath"]: m["name"] for m in s.get("volumeMounts") or []}
    mount_dir = os.path.dirname(config_path)
    volumes = [v for v in pod.get("volumes") or [] if v.get("name") == mounts.get(mount_dir)]
    volume = volumes[0] if volumes else None
    cm_name = ((volume or {}).get("configMap") or {}).get("name")
    if cm_name not in configmaps:
        problems.append(f"{who}: {config_path} is not mounted from a ConfigMap of this render")
        continue
    text = (configmaps[cm_name].get("data") or {}).get(os.path.basename(config_path))
    if text is None:
        problems.append(f"{who}: ConfigMap {cm_name} has no {os.path.basename(config_path)}")
        continue
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{who}: ConfigMap {cm_name}: {os.path.basename(config_path)} "
                        f"is not TOML: {e}")
        continue
    try:
        grace = seconds(str((config.get("process") or {}).get("shutdown_grace", "30s")))
    except ValueError as e:
        problems.append(f"{who}: [process] shutdown_grace: {e}")
        continue
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps < grace + 3:
        problems.append(f"{who}: terminationGracePeriodSeconds {tgps} is less than Sentinel's "
                        f"shutdown_grace ({grace:g} s) + 3 s")
    admin = str((config.get("admin") or {}).get("listen", "127.0.0.1:9930"))
    if admin.startswith(("127.", "[::1]", "localhost")):
        problems.append(f"{who}: [admin] listen = {admin!r} is loopback: the kubelet's probes "
                        f"cannot reach it")
    admin_port = int(admin.rsplit(":", 1)[1])
    ports = s.get("ports") or []
    if not any(p.get("name") == "admin" and p.get("containerPort") == admin_port for p in ports):
        problems.append(f"{who}: sentinel has no port named admin at {admin_port} ([admin] listen)")
    if sentinel_bin:
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
            tmp.write(text)
            tmp.flush()
            run = subprocess.run([sentinel_bin, "check-config", "--config", tmp.name],
                                 capture_output=True, text=True)
        if run.returncode != 0:
            detail = (run.stderr or run.stdout).strip()
            detail = detail.replace(tmp.name, os.path.basename(config_path))
            problems.append(f"{who}: `sentinel check-config` ({sentinel_bin}) refuses ConfigMap "
                            f"{cm_name}: {detail}")

for doc in docs:
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Service":
        targets = [p for _, labels, p in pods if matches(spec.get("selector"), labels)]
        if not targets:
            problems.append(f"{ident(doc)}: its selector matches no pod of this render")
        for port in spec.get("ports") or []:
            tp = port.get("targetPort")
            if isinstance(tp, str) and not any(tp in port_names(p) for p in targets):
                problems.append(f"{ident(doc)}: targetPort {tp!r} is no port of the selected pods")
    elif (doc.get("apiVersion"), kind) == ("monitoring.coreos.com/v1", "PodMonitor"):
        selector = (spec.get("selector") or {}).get("matchLabels")
        endpoints = spec.get("podMetricsEndpoints")
        if not isinstance(spec.get("selector"), dict):
            problems.append(f"{ident(doc)}: spec.selector is required")
        if not isinstance(endpoints, list) or not endpoints:
            problems.append(f"{ident(doc)}: spec.podMetricsEndpoints must be a non-empty list")
            continue
        targets = [p for _, labels, p in pods if matches(selector, labels)]
        if not targets:
            problems.append(f"{ident(doc)}: spec.selector matches no pod of this render")
        for i, ep in enumerate(endpoints):
            if not isinstance(ep, dict):
                problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}] must be an object")
                continue
            unknown = set(ep) - {"port", "portNumber", "targetPort", "path", "scheme", "interval",
                                 "scrapeTimeout", "honorLabels", "honorTimestamps",
                                 "relabelings", "metricRelabelings", "params", "enableHttp2",
                                 "followRedirects", "filterRunning", "authorization",
                                 "basicAuth", "bearerTokenSecret", "oauth2", "tlsConfig",
                                 "proxyUrl", "trackTimestampsStaleness"}
            if unknown:
                problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}]: unknown fields "
                                f"{sorted(unknown)}")
            port = ep.get("port")
            if port is None and ep.get("portNumber") is None and ep.get("targetPort") is None:
                problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}] names no port")
            elif isinstance(port, str) and not any(port in port_names(p) for p in targets):
                problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}].port {port!r} is no "
                                f"port of the selected pods")
            if not str(ep.get("path", "/metrics")).startswith("/"):
                problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}].path must start with /")
            for key in ("interval", "scrapeTimeout"):
                if key in ep and not re.fullmatch(r"(\d+(ms|s|m|h))+", str(ep[key])):
                    problems.append(f"{ident(doc)}: podMetricsEndpoints[{i}].{key} "
                                    f"{ep[key]!r} is not a duration")

kinds = sorted({d.get("kind", "?") for d in docs})
if problems:
    print(f"FAIL {name}: {len(problems)} problem(s)")
    for p in problems:
        print(f"    {p}")
    sys.exit(1)
checked = "sentinel check-config, " if sentinel_bin else ""
print(f"ok   {name}: {len(docs)} objects ({', '.join(kinds)}); schemas {', '.join(versions)}, "
      f"{checked}cross-checks")
PY
        failed=1
    fi
done

if [[ -z "$sentinel_bin" ]]; then
    echo "note: no sentinel binary (SENTINEL_BIN, target/{debug,release}/sentinel): the configs" \
        "were parsed as TOML but not checked by \`sentinel check-config\`"
fi
if ((failed)); then
    echo "check-manifests: FAILED"
    exit 1
fi
echo "check-manifests: all manifests valid"
