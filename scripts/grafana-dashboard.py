#!/usr/bin/env python3
"""Writes configs/grafana/flywheel.json, the Grafana dashboard over the gateway's Prometheus
metrics (import it as is: Dashboards > Import, pick the Prometheus data source). Edit the panel
list here and run `python3 scripts/grafana-dashboard.py` rather than editing the JSON by hand.
"""

import json
import pathlib

M = '{model=~"$model"}'


def panel(title, exprs, unit="short", kind="timeseries", description=""):
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(65 + i), "expr": expr, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


SECTIONS = [
    ("Serving", [
        panel("Requests per second by version", [(f'sum by (version) (rate(flywheel_requests_total{M}[$__rate_interval]))', "v{{version}}")], "reqps"),
        panel("Error ratio by version", [(
            f'sum by (version) (rate(flywheel_requests_total{{model=~"$model",code!="200"}}[$__rate_interval])) / '
            f'sum by (version) (rate(flywheel_requests_total{M}[$__rate_interval]))', "v{{version}}")], "percentunit"),
        panel("Latency p50 / p99 by version", [
            (f'histogram_quantile(0.5, sum by (le, version) (rate(flywheel_request_duration_seconds_bucket{M}[$__rate_interval])))', "p50 v{{version}}"),
            (f'histogram_quantile(0.99, sum by (le, version) (rate(flywheel_request_duration_seconds_bucket{M}[$__rate_interval])))', "p99 v{{version}}"),
        ], "s"),
        panel("Queue and compute p99", [
            (f'histogram_quantile(0.99, sum by (le, version) (rate(flywheel_queue_duration_seconds_bucket{M}[$__rate_interval])))', "queue v{{version}}"),
            (f'histogram_quantile(0.99, sum by (le, version) (rate(flywheel_compute_duration_seconds_bucket{M}[$__rate_interval])))', "compute v{{version}}"),
        ], "s"),
        panel("Batch rows (mean) and queue depth", [
            (f'sum by (version) (rate(flywheel_batch_rows_sum{M}[$__rate_interval])) / sum by (version) (rate(flywheel_batch_rows_count{M}[$__rate_interval]))', "rows/batch v{{version}}"),
            (f'sum by (version) (flywheel_queue_depth{M})', "queued v{{version}}"),
            (f'sum by (version) (flywheel_pending_requests{M})', "pending v{{version}}"),
        ]),
        panel("Refused: queue full, deadlines, budgets", [
            (f'sum by (version) (rate(flywheel_rejected_total{M}[$__rate_interval]))', "queue full v{{version}}"),
            ('sum by (reason) (rate(flywheel_requests_cut_total[$__rate_interval]))', "cut: {{reason}}"),
            ('sum by (reason) (rate(flywheel_connections_closed_total[$__rate_interval]))', "closed: {{reason}}"),
        ], "reqps"),
    ]),
    ("Rollout", [
        panel("Traffic per arm", [(f'sum by (arm) (rate(flywheel_arm_requests_total{M}[$__rate_interval]))', "{{arm}}")], "reqps"),
        panel("Decisions (promote, roll back, advance, weight, swap)", [
            (f'sum by (action) (increase(flywheel_rollout_decisions_total{M}[$__rate_interval]))', "{{action}}")], "short", "barchart"),
        panel("Shadow mirror", [(f'sum by (outcome) (rate(flywheel_shadow_requests_total{M}[$__rate_interval]))', "{{outcome}}")], "reqps"),
        panel("Controller lease held (fleet)", [(f'max by (model) (flywheel_controller_leader{M})', "{{model}}")]),
    ]),
    ("Quality (joined labels)", [
        panel("Log loss per arm", [(f'flywheel_quality{{model=~"$model",measure="log_loss"}}', "{{arm}} v{{version}}")]),
        panel("Accuracy per arm", [(f'flywheel_quality{{model=~"$model",measure="accuracy"}}', "{{arm}} v{{version}}")], "percentunit"),
        panel("Calibration error (ECE) per arm", [(f'flywheel_quality{{model=~"$model",measure="ece"}}', "{{arm}} v{{version}}")]),
        panel("Labels by outcome", [(f'sum by (outcome) (rate(flywheel_labels_total{M}[$__rate_interval]))', "{{outcome}}")], "short"),
    ]),
    ("Drift", [
        panel("PSI per feature (last window)", [(f'flywheel_drift_psi{M}', "{{feature}}")]),
        panel("KS p-value per feature (last window)", [(f'flywheel_drift_ks_pvalue{M}', "{{feature}}")]),
        panel("Drift events", [(f'sum by (detector) (increase(flywheel_drift_events_total{M}[$__rate_interval]))', "{{detector}}")], "short", "barchart"),
    ]),
    ("Samples and fleet", [
        panel("Sampled rows and drops", [
            (f'sum (rate(flywheel_sample_rows_total{M}[$__rate_interval]))', "rows"),
            (f'sum (rate(flywheel_tap_dropped_total{M}[$__rate_interval]))', "dropped"),
            ('sum by (kind) (rate(flywheel_sample_write_errors_total[$__rate_interval]))', "write errors: {{kind}}"),
        ]),
        panel("Registry copy and store", [
            ('sum by (result) (rate(flywheel_registry_syncs_total[$__rate_interval]))', "syncs {{result}}"),
            ('rate(flywheel_registry_store_requests_total[$__rate_interval])', "store requests"),
            ('sum by (result) (rate(flywheel_sample_uploads_total[$__rate_interval]))', "uploads {{result}}"),
        ]),
        panel("Components degraded (recent panic)", [('max by (component) (flywheel_component_degraded)', "{{component}}")]),
        panel("In flight and inference threads", [
            ('sum (flywheel_requests_in_flight)', "in flight"),
            (f'sum by (version) (flywheel_inference_instances{M})', "threads v{{version}}"),
        ]),
    ]),
]


def dashboard():
    panels, y = [], 0
    next_id = 1
    for title, items in SECTIONS:
        r = row(title)
        r.update({"id": next_id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        panels.append(r)
        next_id, y = next_id + 1, y + 1
        for i, p in enumerate(items):
            p.update({"id": next_id, "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)}})
            panels.append(p)
            next_id += 1
        y += 8 * ((len(items) + 1) // 2)
    return {
        "title": "Flywheel",
        "uid": "flywheel",
        "tags": ["flywheel", "inference", "mlops"],
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "editable": True,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "model", "type": "query", "label": "Model", "includeAll": True, "multi": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(flywheel_requests_total, model)", "refId": "model"},
             "definition": "label_values(flywheel_requests_total, model)", "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "annotations": {"list": [
            {"name": "Promotions and rollbacks", "enable": True, "iconColor": "orange",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "expr": 'sum by (model, action) (increase(flywheel_rollout_decisions_total{action=~"promote|roll_back"}[1m])) > 0',
             "titleFormat": "{{action}} {{model}}", "step": "60s"},
            {"name": "Drift events", "enable": True, "iconColor": "red",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "expr": 'sum by (model, detector) (increase(flywheel_drift_events_total[1m])) > 0',
             "titleFormat": "drift {{model}} ({{detector}})", "step": "60s"},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parents[1] / "configs" / "grafana" / "flywheel.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
