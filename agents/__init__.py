"""OMS: four Faust services (a folder each), the runtime they share (messaging/,
observability/), operator tools (ops/), development tooling (dev/); topology.py is the map."""
