// k6: single-event ingest at a constant arrival rate.
//
//   source var/local.env
//   tools/k6-venv/bin/k6 run -e RATE=2000 -e DURATION=30s loadtest/k6/ingest.js
//
// RATE is requests per second; BATCH=100 sends batches of 100 events to
// /v1/events/batch instead (RATE then counts batches). Thresholds fail the run
// when fewer than 99.5% of requests get 202 or p99 exceeds 25 ms.
import http from "k6/http";
import { check } from "k6";

const BASE = __ENV.TRIGGERS_GATEWAY_URL || "http://127.0.0.1:8080";
const KEY = __ENV.TRIGGERS_DEMO_API_KEY;
const RATE = parseInt(__ENV.RATE || "1000", 10);
const DURATION = __ENV.DURATION || "30s";
const BATCH = parseInt(__ENV.BATCH || "0", 10);

export const options = {
  scenarios: {
    ingest: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: DURATION,
      preAllocatedVUs: Math.max(50, Math.ceil(RATE / 20)),
      maxVUs: Math.max(200, RATE),
    },
  },
  thresholds: {
    checks: ["rate>0.995"],
    http_req_duration: ["p(99)<25"],
  },
  summaryTrendStats: ["avg", "p(50)", "p(95)", "p(99)", "max"],
};

function event(i) {
  return {
    type: "order.created",
    source: "https://shop.example/orders",
    subject: `order-${i}`,
    data: { order_id: i, customer: "cus_123", total: 99.5, currency: "EUR", items: [{ sku: "A-1", qty: 2 }] },
  };
}

const single = JSON.stringify(event(42));
const batch = JSON.stringify({ events: Array.from({ length: BATCH || 1 }, (_, i) => event(i)) });
const params = { headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" } };

export function setup() {
  if (!KEY) {
    throw new Error("TRIGGERS_DEMO_API_KEY is not set: source var/local.env (scripts/run-local writes it)");
  }
}

export default function () {
  const response = BATCH
    ? http.post(`${BASE}/v1/events/batch`, batch, params)
    : http.post(`${BASE}/v1/events`, single, params);
  check(response, { "202 accepted": (r) => r.status === 202 });
}
