"""The torch-free half of the engine: what the terminal app may import.

Presets and their validation, the ladder's registry and settings, the run-folder format with its
writers and readers, device slots, pruning rules and the task table. Nothing here imports torch
or textual (import-linter contracts in pyproject.toml hold that), so the app starts fast and a
preset validates without torch.
"""
