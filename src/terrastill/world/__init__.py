"""The synthetic offline demo world: UTM tiles, ground truth, scenes, clouds, a STAC catalogue.

``terrastill.world.build.build_world(out, WorldConfig(...))`` writes everything and returns the
manifest (``OUT/world.json``); the modules are small and pure so tests can re-derive any layer
(truth, cloud masks) for any acquisition and compare it with what was written.
"""
