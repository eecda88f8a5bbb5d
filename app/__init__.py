"""The application layer: the command line, the stages of a run, device parity and the ablation driver. It is the only
layer that composes the others (app -> benchmarks -> deploy -> pipeline's core); the import contract in pyproject.toml
(checked by tests/test_layers.py) fails on an import the other way."""
