"""Service runtime shared by every Shuidian service: MQTT link, supervisor, database, migrations, outbox, health.

Exception tree::

    KitError
    ├── MqttUnavailable     the broker could not be reached in time to publish
    └── MigrationError      a schema migration failed
"""
