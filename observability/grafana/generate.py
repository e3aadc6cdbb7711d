#!/usr/bin/env python3
# Writes the Grafana dashboards of this folder: python3 observability/grafana/generate.py
# (edit here, not in the JSON). Every query uses only metrics of docs/metrics.md;
# the runner test runs each one against a real Prometheus scraping a live stack.
import json
import os
NS='namespace=~"$namespace", instance=~"$instance"'
def sel(extra=""):
    return "{"+(extra+", " if extra else "")+NS+"}"
R='$__rate_interval'
def panel(title, exprs, unit="short", kind="timeseries", legend=None, desc=""):
    targets=[]
    for i,e in enumerate(exprs):
        expr, leg = (e if isinstance(e, tuple) else (e, legend or ""))
        targets.append({"datasource":{"type":"prometheus","uid":"${datasource}"},"expr":expr,"legendFormat":leg,"refId":chr(65+i)})
    return {"type":kind,"title":title,"description":desc,"datasource":{"type":"prometheus","uid":"${datasource}"},
            "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},"options":{},"targets":targets}
def dashboard(uid,title,panels,desc):
    out=[]
    for i,p in enumerate(panels):
        p=dict(p); p["id"]=i+1
        out.append(p)
    # layout: stats 4 per row, series 2 per row
    x=y=0; rowh=0
    for p in out:
        w=6 if p["type"]=="stat" else 12
        h=4 if p["type"]=="stat" else 8
        if x+w>24: x=0; y+=rowh; rowh=0
        p["gridPos"]={"x":x,"y":y,"w":w,"h":h}
        x+=w; rowh=max(rowh,h)
    return {"uid":uid,"title":title,"description":desc,"tags":["triggers"],"timezone":"browser","schemaVersion":39,"version":1,
            "refresh":"30s","time":{"from":"now-1h","to":"now"},
            "templating":{"list":[
              {"name":"datasource","type":"datasource","query":"prometheus","label":"Data source","current":{}},
              {"name":"namespace","type":"query","datasource":{"type":"prometheus","uid":"${datasource}"},
               "query":{"query":"label_values(triggers_build_info, namespace)","refId":"ns"},"includeAll":True,"allValue":".*","multi":True,"current":{"text":"All","value":"$__all"},"refresh":2,"label":"Namespace"},
              {"name":"instance","type":"query","datasource":{"type":"prometheus","uid":"${datasource}"},
               "query":{"query":"label_values(triggers_build_info{namespace=~\"$namespace\"}, instance)","refId":"inst"},"includeAll":True,"allValue":".*","multi":True,"current":{"text":"All","value":"$__all"},"refresh":2,"label":"Instance"}]},
            "panels":out}
def hq(q, metric, by="", where=""):
    """A histogram quantile of `metric` over the dashboard's range, summed by le (and `by`)."""
    le = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({le}) (rate({metric}_bucket{sel(where)}[{R}])))"
ING='route="/v1/events", method="POST"'
ING202=ING+', status="202"'
DELIVERED='result="delivered"'
DEAD='result="dead_lettered"'
NORETRY='group!~".*-retry-.*"'
RETRY='group=~".*-retry-.*"'
overview=dashboard("triggers-overview","Triggers / Overview",[
  panel("Ingest rate (events/s)",[f"sum(rate(triggers_gateway_events_accepted_total{sel()}[{R}]))"],"reqps","stat"),
  panel("202 ratio of POST /v1/events",[f'sum(rate(triggers_http_requests_total{sel(ING202)}[{R}])) / sum(rate(triggers_http_requests_total{sel(ING)}[{R}]))'],"percentunit","stat",desc="SLO 99.9%"),
  panel("Ack latency p99",[hq("0.99", "triggers_http_request_duration_seconds", where=ING)],"s","stat",desc="PRD: p95 < 100 ms"),
  panel("End-to-end p95 (202 to webhook 2xx)",[hq("0.95", "triggers_delivery_e2e_seconds")],"s","stat",desc="PRD: p95 < 5 s"),
  panel("Delivery success rate",[f'sum(rate(triggers_deliverer_attempts_total{sel(DELIVERED)}[{R}])) / sum(rate(triggers_deliverer_attempts_total{sel()}[{R}]))'],"percentunit","stat"),
  panel("Dead-lettered in the last hour",[f'sum(increase(triggers_deliverer_attempts_total{sel(DEAD)}[1h])) or vector(0)'],"short","stat"),
  panel("Consumer lag by group (retry tiers excluded)",[(f'sum by (group) (triggers_consumer_lag_records{sel(NORETRY)})',"{{group}}")],"short"),
  panel("Process CPU (cores)",[(f"rate(process_cpu_seconds_total{sel()}[{R}])","{{instance}}")],"short"),
  panel("Resident memory",[(f"process_resident_memory_bytes{sel()}","{{instance}}")],"bytes"),
  panel("Scrape targets up",[(f'up{{job=~"triggers.*", {NS}}}',"{{job}} {{instance}}")],"short"),
],"SLOs of the whole pipeline: ingest rate, 202 ratio, ack p99, end-to-end p95, delivery success, DLQ growth.")
ingest=dashboard("triggers-ingest","Triggers / Ingest",[
  panel("Requests by route and status",[(f"sum by (route, status) (rate(triggers_http_requests_total{sel()}[{R}]))","{{route}} {{status}}")],"reqps"),
  panel("Request latency p50/p99 by route",[(hq("0.5", "triggers_http_request_duration_seconds", by="route"),"p50 {{route}}"),(hq("0.99", "triggers_http_request_duration_seconds", by="route"),"p99 {{route}}")],"s"),
  panel("Events accepted and rejected",[(f"sum(rate(triggers_gateway_events_accepted_total{sel()}[{R}]))","accepted"),(f"sum by (reason) (rate(triggers_gateway_events_rejected_total{sel()}[{R}])) or vector(0)","rejected {{reason}}")],"reqps"),
  panel("Produce latency p99 (enqueue to Kafka ack)",[(hq("0.99", "triggers_gateway_produce_duration_seconds", by="result"),"{{result}}")],"s"),
  panel("Producer queue depth",[(f"triggers_gateway_producer_queue_depth{sel()}","{{instance}}")],"short"),
  panel("Authentication failures by reason",[(f"sum by (reason) (rate(triggers_gateway_auth_failures_total{sel()}[{R}])) or vector(0)","{{reason}}")],"reqps"),
],"The gateway: requests, acknowledgement latency, Kafka produce, rejections.")
pipeline=dashboard("triggers-pipeline","Triggers / Pipeline lag",[
  panel("Lag by group",[(f"sum by (group) (triggers_consumer_lag_records{sel()})","{{group}}")],"short"),
  panel("Lag by topic and partition",[(f"sum by (topic, partition) (triggers_consumer_lag_records{sel()})","{{topic}}/{{partition}}")],"short"),
  panel("Records handled by service and result",[(f"sum by (service, result) (rate(triggers_records_handled_total{sel()}[{R}]))","{{service}} {{result}}")],"reqps"),
  panel("Router events by result",[(f"sum by (result) (rate(triggers_router_events_total{sel()}[{R}]))","{{result}}")],"reqps"),
  panel("Router bytes in flight",[(f"triggers_router_in_flight_bytes{sel()}","{{instance}}")],"bytes"),
  panel("Quarantined records",[(f"sum by (service, reason) (increase(triggers_quarantined_total{sel()}[1h])) or vector(0)","{{service}} {{reason}}")],"short"),
],"Consumer lag per group, topic and partition (retry tiers show their depth), throughput and quarantine.")
delivery=dashboard("triggers-delivery","Triggers / Delivery",[
  panel("Attempts by result",[(f"sum by (result) (rate(triggers_deliverer_attempts_total{sel()}[{R}]))","{{result}}")],"reqps"),
  panel("Responses by status class",[(f"sum by (status_class) (rate(triggers_deliverer_responses_total{sel()}[{R}]))","{{status_class}}")],"reqps"),
  panel("Webhook latency p50/p95",[(hq("0.5", "triggers_deliverer_attempt_duration_seconds"),"p50"),(hq("0.95", "triggers_deliverer_attempt_duration_seconds"),"p95")],"s"),
  panel("End to end p50/p95/p99",[(hq(q, "triggers_delivery_e2e_seconds"),f"p{int(float(q)*100)}") for q in ("0.5","0.95","0.99")],"s"),
  panel("Retry tier depth",[(f'sum by (group) (triggers_consumer_lag_records{sel(RETRY)}) or vector(0)',"{{group}}")],"short"),
  panel("Parked, deferred, held, skipped",[(f"sum(rate(triggers_deliverer_parked_total{sel()}[{R}])) or vector(0)","parked"),(f"sum(rate(triggers_deliverer_deferred_total{sel()}[{R}])) or vector(0)","deferred"),(f"sum by (reason) (rate(triggers_deliverer_held_total{sel()}[{R}])) or vector(0)","held {{reason}}"),(f"sum by (reason) (rate(triggers_deliverer_skipped_total{sel()}[{R}])) or vector(0)","skipped {{reason}}")],"reqps"),
],"Webhook attempts, responses, latency, end to end, retry tiers and DLQ.")
storage=dashboard("triggers-storage","Triggers / Storage",[
  panel("DynamoDB calls by operation",[(f"sum by (operation) (rate(triggers_dynamodb_request_duration_seconds_count{sel()}[{R}]))","{{operation}}")],"reqps"),
  panel("DynamoDB latency p99 by operation",[(hq("0.99", "triggers_dynamodb_request_duration_seconds", by="operation"),"{{operation}}")],"s"),
  panel("DynamoDB errors by kind",[(f"sum by (kind) (rate(triggers_dynamodb_errors_total{sel()}[{R}])) or vector(0)","{{kind}}")],"reqps"),
  panel("Persister writes",[(f"sum(rate(triggers_persister_events_total{sel()}[{R}]))","events"),(f"sum(rate(triggers_persister_outcomes_total{sel()}[{R}]))","outcomes")],"reqps"),
  panel("Persister batch size p50",[(hq("0.5", "triggers_persister_batch_size"),"p50")],"short"),
],"The persister and every service's DynamoDB calls: rate, latency, errors, throttling.")
for name,d in [("overview",overview),("ingest",ingest),("pipeline",pipeline),("delivery",delivery),("storage",storage)]:
    open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.json"),"w").write(json.dumps(d,indent=2)+"\n")
print("ok")
