"""RTL tests run short programs: a model compiled at -O0 builds in about half the time of -O2."""

import os

os.environ.setdefault("TESSERA_RTL_OPT", "-O0")
