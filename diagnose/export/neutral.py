"""The neutral description (`--to json`): every setting of the configuration, in no trainer's vocabulary,
for a trainer no exporter knows. Every configuration can be described."""

from __future__ import annotations

import json
from typing import Any

from .base import Exporter
from .spec import TrainingSpec


class JSONExporter(Exporter):
    name = "json"
    title = "a neutral description (JSON)"
    filename = "training.json"

    def settings(self, spec: TrainingSpec) -> dict[str, Any]:
        return spec.to_dict()

    def render(self, spec: TrainingSpec, settings: dict[str, Any], warnings: list[str]) -> str:
        return json.dumps({**settings, "warnings": list(warnings)}, indent=2, allow_nan=False) + "\n"
