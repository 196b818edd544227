"""The privileged half: loads the BPF programs, reads the ring buffer, emits frames."""
