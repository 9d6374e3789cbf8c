"""Notification channels (webhook, e-mail, SMS, MQTT push), the persisted delivery queue and tenants' settings."""
