"""Pure builders: API model in, Kubernetes object (a plain dict) out. No API calls, no I/O."""
