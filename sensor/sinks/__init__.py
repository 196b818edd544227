"""Sinks: where alerts, incidents (and optionally events and facts) leave the host besides the
API: a JSON lines file, syslog, a Falco-shaped webhook, OpenTelemetry logs; and the Prometheus
metrics endpoint. See base.py for the contract every sink keeps."""
