"""The package's layers (docs/architecture.md): imports go only down, modules stay short, and the
architecture page names what the code has."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "uaal_ext"
MAX_LINES = 600

# Layer of each part of the package: a module may import its own layer and the ones below.
LAYERS = {"ops": 1, "library": 2, "experiment": 3}
SHARED = {"_validation", "_build", "_C", "__init__", "__main__"}  # serve every layer


def _layer(module: str) -> int:
    """``module`` is a dotted name below uaal_ext (``acquisition.pool``); 0 for the shared helpers."""
    top = module.split(".")[0]
    if top in SHARED:
        return 0
    return LAYERS.get(top, LAYERS["library"])


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _imports(path: Path, module: str):
    """Every uaal_ext module ``path`` imports, as dotted names below uaal_ext."""
    package = module.split(".")[:-1]  # the package a relative import starts from
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
                names = (
                    [".".join(target + [alias.name]) for alias in node.names] if not node.module else [".".join(target)]
                )
                yield from (n for n in names if n)
            elif node.module and node.module.startswith("uaal_ext"):
                yield node.module.removeprefix("uaal_ext").lstrip(".") or "__init__"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("uaal_ext."):
                    yield alias.name.removeprefix("uaal_ext.")


def test_imports_only_go_down_the_layers():
    upward = []
    for path, module in _modules():
        if module.split(".")[-1] == "__init__" and module.count(".") == 0:
            continue  # the package's own __init__ re-exports the public names of layers 1 and 2
        for imported in _imports(path, module):
            if imported and _layer(imported) > _layer(module) and _layer(module) != 0:
                upward.append(f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})")
    assert not upward, "\n".join(upward)


def test_the_shared_helpers_and_ops_import_nothing_above_them():
    for path, module in _modules():
        if module.split(".")[0] in {"_validation", "_build"} or module.startswith("ops"):
            for imported in _imports(path, module):
                assert _layer(imported) <= 1, f"{module} imports {imported}"


def test_no_module_is_longer_than_the_limit():
    long = [
        f"{path.relative_to(REPO)}: {n}"
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, long


def test_the_importer_sees_the_layers():
    # A check that could not fail would prove nothing: an upward import is found.
    module = "ops.cross_entropy"
    assert _layer(module) == 1 and _layer("acquisition.pool") == 2 and _layer("experiment.al.loop") == 3
    assert "experiment.al.loop" in set(
        _imports(PACKAGE / "experiment" / "al" / "__init__.py", "experiment.al.__init__")
    )
    assert "ops.scores" in set(_imports(PACKAGE / "acquisition" / "base.py", "acquisition.base"))


@pytest.mark.parametrize("page", ["architecture.md", "math.md", "performance.md", "gpu_check.md"])
def test_docs_name_only_paths_that_exist(page):
    text = (REPO / "docs" / page).read_text()
    paths = set(
        re.findall(
            r"(?:uaal_ext|csrc|python_tests|benchmarks|experiment|acquisition|uncertainty|ops|scripts)/[\w/.*-]+", text
        )
    )
    missing = []
    for name in paths:
        name = name.rstrip(".")
        candidates = [REPO / name, PACKAGE / name]
        if "*" in name:
            found = any(list(REPO.glob(name)) + list(PACKAGE.glob(name)))
        else:
            found = any(c.exists() for c in candidates)
        if not found:
            missing.append(name)
    assert not missing, f"{page} names paths that do not exist: {sorted(missing)}"


def test_architecture_page_names_every_part_of_the_package():
    text = (REPO / "docs" / "architecture.md").read_text()
    parts = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
    parts |= {
        p.name
        for p in (PACKAGE / "experiment").iterdir()
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
    }
    parts -= {"__init__.py", "__main__.py"}
    missing = sorted(name for name in parts if name.removesuffix(".py") not in text)
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_code_cites_only_sections_the_math_page_has():
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in (REPO / "docs" / "math.md").read_text().splitlines()
        if line.startswith("## ")
    }
    cited = set()
    for path in (
        list(PACKAGE.rglob("*.py")) + list((REPO / "csrc").rglob("*.*")) + list((REPO / "benchmarks").glob("*.py"))
    ):
        cited |= set(re.findall(r"docs/math\.md#([a-z0-9-]+)", path.read_text()))
    assert cited and cited <= anchors, sorted(cited - anchors)
