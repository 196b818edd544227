"""The unprivileged half: owns all state and every decision, live or from a capture."""
