"""Segment transitions: pure membership rules, the PTransform and its DoFns, carried
state and the mass-exit guard."""
