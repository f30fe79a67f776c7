"""Starting and managing vLLM: launch specs, the Docker boundary, readiness and diagnosis."""
