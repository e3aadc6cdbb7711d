"""Assertions on the chart's rendered output (run by helm/test-chart).

Usage: check_rendered.py VALUES_FILE RENDERED_FILE [CRDS_JSON]

With CRDS_JSON, also writes the CRD-backed documents there as a JSON list,
for helm/validate_crds.mjs.

Kubernetes' own kinds are validated against their schemas by
kubernetes-validate; this checks what a schema cannot: the security context,
probes, drain times, PDBs, the provisioning hook, and the CRD-backed kinds
(ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule) against
the fields their CRDs require.
"""

import json
import re
import sys

import yaml

CONSUMERS = ("router", "persister", "deliverer")
SERVICES = ("gateway",) + CONSUMERS


def fail(message):
    raise AssertionError(message)


def check(condition, message):
    if not condition:
        fail(message)


def seconds(duration):
    units = {"h": 3600, "m": 60, "s": 1}
    total = 0
    for number, unit in re.findall(r"([0-9]+)(ms|h|m|s)", duration):
        total += 0 if unit == "ms" else int(number) * units[unit]
    return total


def merged_values(path):
    with open("helm/triggers/values.yaml") as f:
        values = yaml.safe_load(f)
    with open(path) as f:
        override = yaml.safe_load(f) or {}

    def merge(base, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(values, override)
    return values


CRD_KINDS = ("ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule")


def main(values_path, rendered_path, crds_path=None):
    values = merged_values(values_path)
    with open(rendered_path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if crds_path:
        with open(crds_path, "w") as f:
            json.dump([d for d in docs if d["kind"] in CRD_KINDS], f)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    partitions = values["topics"]["partitions"]

    # Deployments: one per service, hardened, probed, drained.
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind["Deployment"]}
    expected = set(SERVICES) | ({"registry"} if values["registry"]["enabled"] else set())
    check(set(deployments) == expected, f"deployments {sorted(deployments)} != {sorted(expected)}")
    for component, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        where = f"deployment {component}"
        check(pod["securityContext"].get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        check(pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp")
        check(pod.get("serviceAccountName"), f"{where}: serviceAccountName")
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        check(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")), f"{where}: checksum/config")
        check(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/secret", "")), f"{where}: checksum/secret")
        check(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, f"{where}: maxUnavailable 0")
        if values["topologySpread"]["enabled"]:
            keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])}
            check(keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, f"{where}: topology spread {keys}")
        (container,) = pod["containers"]
        security = container["securityContext"]
        check(security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
        check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
        check(security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities drop ALL")
        check(container["command"] == [f"/usr/local/bin/triggers-{component}"], f"{where}: command")
        check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{where}: liveness on /healthz")
        check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{where}: readiness on /readyz")
        check(container["startupProbe"]["httpGet"]["path"] == "/healthz", f"{where}: startup on /healthz")
        check("limits" in container["resources"] and "requests" in container["resources"], f"{where}: resources")
        env = {e["name"]: e for e in container["env"]}
        check(env["TRIGGERS_CONFIG"]["value"] == "/etc/triggers/config.toml", f"{where}: TRIGGERS_CONFIG")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        check(mounts["/etc/triggers"].get("readOnly") is True, f"{where}: config mounted read-only")
        grace = pod["terminationGracePeriodSeconds"]
        if component in CONSUMERS:
            drain = seconds(values[component]["shutdownGrace"])
            check(grace > drain + 5, f"{where}: terminationGracePeriodSeconds {grace} <= drain {drain} + 5")
        if component == "gateway":
            pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            # preStop, then in-flight requests (10 s), then the producer flush (5 s).
            check(grace > pre_stop + 15, f"{where}: grace {grace} <= preStop {pre_stop} + 15")
        if values["kafka"]["auth"]["mode"] == "scram":
            password = env.get("TRIGGERS_KAFKA__EXTRA__sasl.password")
            check(password and password["valueFrom"]["secretKeyRef"]["key"], f"{where}: SCRAM password from a Secret")

    # PodDisruptionBudgets select their service's pods.
    pdbs = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("PodDisruptionBudget", [])}
    for component in SERVICES:
        if values[component]["pdb"]["enabled"]:
            pdb = pdbs.get(component) or fail(f"no PDB for {component}")
            selector = pdb["spec"]["selector"]["matchLabels"]
            labels = deployments[component]["spec"]["template"]["metadata"]["labels"]
            check(all(labels.get(k) == v for k, v in selector.items()), f"PDB {component} does not select its pods")
            check("minAvailable" in pdb["spec"] or "maxUnavailable" in pdb["spec"], f"PDB {component}: a budget")

    # Services expose the http port of every deployment.
    for service in by_kind["Service"]:
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        check(service["spec"]["ports"][0]["targetPort"] == "http", f"service {component}: targetPort http")
        check(service["metadata"]["labels"].get("triggers.dev/job") == f"triggers-{component}", f"service {component}: job label")

    # The provisioning hook.
    jobs = by_kind.get("Job", [])
    if values["provision"]["enabled"]:
        (job,) = jobs
        hook = job["metadata"]["annotations"]
        check(hook["helm.sh/hook"] == "pre-install,pre-upgrade", f"job hook: {hook}")
        check("before-hook-creation" in hook["helm.sh/hook-delete-policy"], "job: replaced on every run")
        pod = job["spec"]["template"]["spec"]
        check(pod["restartPolicy"] == "Never", "job: restartPolicy Never")
        (container,) = pod["containers"]
        check(container["command"] == ["/usr/local/bin/triggers-provision"], "job: runs triggers-provision")
        check((container.get("args") == ["--no-tables"]) == (not values["provision"]["tables"]), "job: --no-tables iff provision.tables is false")
        check(container["securityContext"].get("readOnlyRootFilesystem") is True, "job: read-only root")
        config_map = pod["volumes"][0]["configMap"]["name"]
        cm = named.get(("ConfigMap", config_map)) or fail(f"job: no ConfigMap {config_map}")
        check(cm["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade", "job: its ConfigMap is a hook too")
        check(f"partitions = {partitions}" in cm["data"]["config.toml"], "job: topic partitions from values")
        check(f"replication_factor = {values['topics']['replicationFactor']}" in cm["data"]["config.toml"], "job: replication factor")
        check(f"min_insync_replicas = {values['topics']['minInsyncReplicas']}" in cm["data"]["config.toml"], "job: min.insync.replicas")
    else:
        check(not jobs, "no job when provisioning is off")

    # Autoscaling: KEDA on lag for consumers, or HPAs; never past the partitions.
    scaled = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("ScaledObject", [])}
    hpas = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("HorizontalPodAutoscaler", [])}
    auths = {d["metadata"]["name"]: d for d in by_kind.get("TriggerAuthentication", [])}
    for component in SERVICES:
        if not values[component]["autoscaling"]["enabled"]:
            continue
        if component in CONSUMERS and values["keda"]["enabled"]:
            so = scaled.get(component) or fail(f"no ScaledObject for {component}")
            spec = so["spec"]
            check(so["apiVersion"] == "keda.sh/v1alpha1", "ScaledObject apiVersion")
            target = spec["scaleTargetRef"]["name"]
            check(("Deployment", target) in named, f"ScaledObject {component} targets {target}")
            check(1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, f"ScaledObject {component}: replicas within 1..partitions")
            (trigger,) = spec["triggers"]
            check(trigger["type"] == "kafka", "ScaledObject: kafka trigger")
            meta = trigger["metadata"]
            for field in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                check(isinstance(meta.get(field), str) and meta[field], f"ScaledObject {component}: metadata.{field} (a string)")
            check(meta["consumerGroup"] == f"triggers-{component}", f"ScaledObject {component}: group")
            mode = values["kafka"]["auth"]["mode"]
            if mode in ("scram", "iam"):
                ref = trigger["authenticationRef"]["name"]
                auth = auths.get(ref) or fail(f"ScaledObject {component}: no TriggerAuthentication {ref}")
                if mode == "iam":
                    check(meta.get("sasl") == "aws_msk_iam" and meta.get("awsRegion"), "IAM trigger: sasl and awsRegion")
                    check(auth["spec"]["podIdentity"]["provider"] == "aws", "IAM TriggerAuthentication: aws pod identity")
                else:
                    check(meta.get("sasl") == "scram_sha512", "SCRAM trigger: sasl")
                    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
                    check(set(refs) == {"username", "password"}, f"SCRAM TriggerAuthentication: {sorted(refs)}")
                    for ref in refs.values():
                        check(ref["name"] and ref["key"], "secretTargetRef needs name and key")
            if mode != "none":
                check(meta.get("tls") == "enable", f"ScaledObject {component}: tls")
            check(component not in hpas, f"{component}: KEDA and an HPA at once")
        else:
            hpa = hpas.get(component) or fail(f"no HPA for {component}")
            spec = hpa["spec"]
            check(spec["metrics"][0]["resource"]["name"] == "cpu", f"HPA {component}: on CPU")
            if component in CONSUMERS:
                check(spec["maxReplicas"] <= partitions, f"HPA {component}: maxReplicas {spec['maxReplicas']} > partitions")

    # Observability.
    monitors = by_kind.get("ServiceMonitor", [])
    check(bool(monitors) == values["metrics"]["serviceMonitor"]["enabled"], "ServiceMonitor iff enabled")
    for monitor in monitors:
        spec = monitor["spec"]
        check(spec["selector"]["matchLabels"], "ServiceMonitor: selector")
        check(spec["jobLabel"] == "triggers.dev/job", "ServiceMonitor: jobLabel")
        ports = {p["name"] for s in by_kind["Service"] for p in s["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            check(endpoint["port"] in ports and endpoint["path"] == "/metrics", f"ServiceMonitor endpoint {endpoint}")
    rules = by_kind.get("PrometheusRule", [])
    check(bool(rules) == values["metrics"]["prometheusRule"]["enabled"], "PrometheusRule iff enabled")
    for rule in rules:
        with open("observability/prometheus/alerts.yml") as f:
            source = yaml.safe_load(f)
        check(rule["spec"] == source, "PrometheusRule: the alert rules of observability/prometheus/alerts.yml")
        for group in rule["spec"]["groups"]:
            check(group["name"] and group["rules"], "PrometheusRule: named groups with rules")
            for r in group["rules"]:
                check(r.get("alert") and r.get("expr"), f"PrometheusRule: alert and expr in {r}")
    dashboards = [d for d in by_kind.get("ConfigMap", []) if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if values["metrics"]["dashboards"]["enabled"]:
        check(len(dashboards) == 5, f"5 dashboard ConfigMaps, found {len(dashboards)}")
        for cm in dashboards:
            ((name, body),) = cm["data"].items()
            check(json.loads(body).get("panels"), f"dashboard {name}: JSON with panels")
    else:
        check(not dashboards, "no dashboards when off")

    # Secrets: the chart's own only without existingSecret.
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    own = [s for s in secrets if s.endswith("-secrets")]
    check(bool(own) == (not values["existingSecret"]), f"chart Secret iff no existingSecret: {sorted(secrets)}")
    print(f"ok: {rendered_path}: {len(docs)} documents")


if __name__ == "__main__":
    main(*sys.argv[1:4])
