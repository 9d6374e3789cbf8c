"""Shuidian alarm: rules, the alarm lifecycle and notifications."""
