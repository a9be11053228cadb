"""Per-component cocotb benches under Verilator (one build for all of them)."""

from pathlib import Path

from tessera.sim.rtl import build_root, run_cocotb, source_hash, verilate

from tessera.arch import NpuConfig

from .components import sources

CONFIG = NpuConfig(name="components", lanes=4, rows=8, dram_bytes=1 << 20)


def test_component_benches(tmp_path):
    from cocotb_tools.runner import get_results
    files = sources(CONFIG)
    build = build_root() / f"components-{source_hash(files, '-O0')}"
    runner = verilate(files, "tb_components", build, opt="-O0")
    xml = run_cocotb(runner, "components_bench", "tb_components", build, tmp_path, module_dirs=[Path(__file__).parent],
                     extra_env={"TB_LANES": str(CONFIG.lanes), "TB_ROWS": str(CONFIG.rows)})
    tests, fails = get_results(xml)
    assert tests == 4 and fails == 0, (tmp_path / "sim.log").read_text()[-3000:]
