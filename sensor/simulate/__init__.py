"""`gpusentry simulate`: perform an incident on this machine, in namespaces of its own, and check
that the running agent reports it (like Falco's event-generator)."""
