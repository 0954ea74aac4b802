"""textcompress: turn a large text classifier into a small, fast one.

The library is pure: functions over paths, configs and torch modules. Orchestration
(DVC stages, Prefect flows, MLflow) lives in `textcompress/stages`, `tasks/` and `flows/`.
"""

__version__ = "0.1.0"
