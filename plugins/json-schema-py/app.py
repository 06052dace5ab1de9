"""The json-schema-py plugin's `validator` hook: a thin wrapper around validation.py.

Invariant: no schema logic here; this file only adapts the generated bindings (world
`validate` of wit/herd.wit) to `validation.check_change`.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, store, types

import validation


def debug(message):
    log.log(log.Level.DEBUG, message.encode("utf-8", "replace").decode("utf-8"))


class Validator(exports.Validator):
    def validate(self, change: types.Change) -> None:
        # Like the C plugin, only whether the write has a value matters: the value itself is
        # read back from the store (as it will be after the write) at each guarded path.
        problem = validation.check_change(change.path, change.value is not None, store, debug)
        if problem is not None:
            raise Err(problem)
