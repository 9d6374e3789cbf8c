"""Notifications, pure: delivery outcomes and back-off, quiet hours, templates, tenants' settings."""
