"""The nginx-upstream plugin's `deriver` hook: a thin wrapper around upstreams.py.

Invariant: no rendering logic here; this file only adapts the generated bindings (world
`derive` of wit/herd.wit) to `upstreams.render_all`.
"""

from typing import List

from wit_world import exports
from wit_world.imports import log, store, types

import upstreams


def warn(message):
    log.log(log.Level.WARN, message.encode("utf-8", "replace").decode("utf-8"))


class Deriver(exports.Deriver):
    def derive(self, changed: List[str]) -> List[types.Output]:
        # Every run renders every service from the committed store, so `changed` is not needed.
        return [types.Output(path, value) for path, value in upstreams.render_all(store, warn)]
