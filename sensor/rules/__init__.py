"""Rules: YAML data, checked on load, matched against facts by the engine."""
