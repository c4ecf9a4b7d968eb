"""The layering rules live in nested ruff configs (`ruff check` enforces them in `make test`); this
keeps their lists complete as modules are added, and covers the two files exempt from them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "loraplane"


def banned(config: Path) -> set[str]:
    return set(tomllib.loads(config.read_text())["lint"]["flake8-tidy-imports"]["banned-api"])


def operator_modules() -> set[str]:
    names = {p.stem for p in OPERATOR.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in OPERATOR.iterdir() if (p / "__init__.py").is_file()}
    return {f"loraplane.{name}" for name in names - {"api"}}


@pytest.mark.parametrize("config", ["operator/loraplane/api/ruff.toml", "worker/loraplane_worker/ruff.toml"])
def test_the_api_and_the_worker_may_use_nothing_of_the_operator_but_the_api(config: str) -> None:
    missing = operator_modules() - banned(ROOT / config)
    assert not missing, f"add {sorted(missing)} to {config}"


def test_every_product_folder_bans_the_dev_cluster() -> None:
    configs = [*OPERATOR.rglob("ruff.toml"), ROOT / "worker" / "loraplane_worker" / "ruff.toml"]
    assert len(configs) == 6
    for config in configs:
        assert "loraplane_devcluster" in banned(config), config


@pytest.mark.parametrize("exempt", ["kube.py", "main.py"])
def test_the_files_exempt_from_the_bans_import_neither_worker_nor_dev_cluster(exempt: str) -> None:
    tree = ast.parse((OPERATOR / exempt).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.startswith(("loraplane_worker", "loraplane_devcluster"))}
