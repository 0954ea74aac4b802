"""The attention_benchmark stage off (the default): it writes its declared outputs, saying it did
not run, at once, and the report leaves the long-input section out."""

from __future__ import annotations

import json

import yaml
from PIL import Image

from textcompress.config import DEFAULTS
from textcompress.decisions.report import attention_section
from textcompress.stages.attention_benchmark import main


def test_a_disabled_attention_benchmark_writes_a_note_and_no_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(DEFAULTS))
    assert DEFAULTS["attention_benchmark"]["enabled"] is False  # the quick look and the default run skip it
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    main(["--params", str(params), "--out", str(out), "--plot", str(plot)])
    result = json.loads(out.read_text())
    assert result["enabled"] is False and "attention_benchmark.enabled" in result["reason"]
    with Image.open(plot) as image:
        assert image.format == "PNG"
    assert attention_section(result) == []
