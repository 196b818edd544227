"""Generated from proto/sensor/api/v1/gpusentry.proto by scripts/gen-proto; do not edit."""
