"""Cluster layer: the spec, local runs, rendering and (later) inventory and placement."""
