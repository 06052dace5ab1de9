"""The normalize plugin's `transformer` hook: a thin wrapper around normalizer.py.

Invariant: no normalisation rules here; this file only adapts the generated bindings (world
`transform` of wit/herd.wit) to `normalizer.transform`.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

import normalizer


class Transformer(exports.Transformer):
    def transform(self, change: types.Change) -> str:
        if change.value is None:
            # herd never calls transform for a delete (wit/herd.wit); say so rather than guess.
            raise Err(f"{change.path}: normalize was asked to transform a delete")
        try:
            return normalizer.transform(change.path, change.value)
        except normalizer.Refused as refused:
            raise Err(str(refused)) from None
