"""The training side of cockpit: presets, the loop, the ladder, telemetry, the run folder.

Runs as its own process (``python -m engine RUN_DIR``). Its run-folder and preset modules
are torch-free so the terminal app can import them.
"""
