// Validates the chart's CRD-backed objects (KEDA ScaledObject and
// TriggerAuthentication, Prometheus Operator ServiceMonitor and
// PrometheusRule) against the JSON schemas generated from their published
// CRDs (npm @kubernetes-models/keda, @kubernetes-models/prometheus-operator,
// installed by scripts/bootstrap into tools/crd-models).
// Usage: node helm/validate_crds.mjs MODELS_DIR < documents.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = join(process.argv[2], "node_modules", "@kubernetes-models");
const load = (path) => import(pathToFileURL(join(root, path)).href);
const keda = await load("keda/keda.sh/v1alpha1/index.js");
const monitoring = await load("prometheus-operator/monitoring.coreos.com/v1/index.js");
const models = {
  ScaledObject: keda.ScaledObject,
  TriggerAuthentication: keda.TriggerAuthentication,
  ServiceMonitor: monitoring.ServiceMonitor,
  PrometheusRule: monitoring.PrometheusRule,
};
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const doc of docs) {
  const Model = models[doc.kind];
  if (!Model) {
    console.error(`no schema for ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.error(`${doc.kind} ${doc.metadata?.name}: ${e.message}`);
    failed++;
  }
}
console.log(`${docs.length - failed}/${docs.length} CRD objects valid`);
process.exit(failed ? 1 : 0);
