"""Insights' pure rules: what-if pricing, saving advice, comparisons, habit clusters and line loss (no I/O)."""
