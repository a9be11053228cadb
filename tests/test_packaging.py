"""The four card folders import as tessera.* subpackages, installed or editable."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    listed = set(cfg["packages"])
    for pkg, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            # A subpackage missing here would be absent from `pip install .` while tests still pass editable.
            assert name in listed, f"{name} ({init.parent}) is not in [tool.setuptools] packages"


def test_subpackages_map_to_top_level_folders():
    import tessera.compiler
    import tessera.hdl
    import tessera.host
    import tessera.sim
    for mod, folder in ((tessera.hdl, "hdl"), (tessera.compiler, "compiler"), (tessera.sim, "sim"),
                        (tessera.host, "host")):
        assert pathlib.Path(mod.__file__).resolve().parent == ROOT / folder
