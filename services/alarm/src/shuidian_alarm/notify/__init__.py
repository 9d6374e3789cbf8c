"""Notifications: templates, delivery channels and the persisted delivery queue."""
