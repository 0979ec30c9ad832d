"""Host-side rewards: a child-process pool, rule-based verifiers and model judges."""
