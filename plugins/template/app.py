"""The template plugin's `deriver` hook: a thin wrapper around render.py.

Invariant: no rendering logic here; this file only adapts the generated bindings (world
`derive` of wit/herd.wit) to `render.render_all`.
"""

import os
from typing import List

from wit_world import exports
from wit_world.imports import log, store, types

import render

# componentize-py keeps what is imported when the component is built: load every part of
# Jinja2 now, including those it imports only when a template fails (jinja2.debug).
render.preload()


def report(message):
    log.log(log.Level.ERROR, message.encode("utf-8", "replace").decode("utf-8"))


class Deriver(exports.Deriver):
    def derive(self, changed: List[str]) -> List[types.Output]:
        # Every run renders every template from the committed store: `changed` is not needed.
        prefix = os.environ.get("HERD_OUTPUT", "/rendered")
        return [types.Output(p, v) for p, v in render.render_all(store, prefix, report)]
