"""The machinery every run's stages share: the runner (order, resume, locks, status), the fingerprints that decide what
reruns, and the run-wide preprocessing spec. The stages themselves, which compose training, export and benchmarks,
live in the application layer (app/stages)."""
