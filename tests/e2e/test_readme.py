"""The README's configuration examples are real: every YAML block loads as written, and the vLLM example starts."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from app.settings import parse_settings
from tests.support.processes import served

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)
NOT_CONFIG = "# Kubernetes"  # a pod spec shown beside the configuration
# What an operator would export: a value for every ${VAR} without a default.
ENVIRON = {
    name: f"value-of-{name.lower()}-0123456789" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", README)
}


def config_blocks() -> list[str]:
    return [block for block in BLOCKS if not block.startswith(NOT_CONFIG)]


def test_the_readme_has_configuration_examples() -> None:
    assert len(config_blocks()) >= 3


def test_every_configuration_block_loads_as_written() -> None:
    for block in config_blocks():
        parse_settings(block, ENVIRON, source="README.md")  # raises ConfigError, naming the line, if not


def test_the_vllm_example_starts_as_it_is(tmp_path: Path) -> None:
    block = next(b for b in config_blocks() if "local-vllm" in b)
    config = tmp_path / "config.yaml"
    config.write_text(block)
    with served(config) as proxy:
        models = httpx.get(f"{proxy.base}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["llama"]
