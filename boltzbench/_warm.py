"""What the fork server of the cell processes imports once (:mod:`boltzbench.isolation`):
boltzbench's built-in modules, each guarded, so that a module that fails to import costs
only the cells that use it (they fail with its error), never the fork server and with it
every cell."""

import importlib

from boltzbench.registry import BUILTIN

for _module in sorted({target.split(":")[0] for table in BUILTIN.values() for target in table.values()}):
    try:
        importlib.import_module(_module)
    except Exception:  # noqa: BLE001, S110 - the cell that needs it reports the error
        pass

try:  # the installed distributions, read once here, not in every cell's process
    from boltzbench.runner import _distributions
    _distributions()
except Exception:  # noqa: BLE001, S110
    pass

try:  # the compiled pair kernel, compiled or loaded from numba's cache once for every cell
    from boltzbench.systems.compiled_pairs import warm_up
    warm_up()
except Exception:  # noqa: BLE001, S110
    pass
