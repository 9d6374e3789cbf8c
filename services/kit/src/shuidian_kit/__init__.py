"""Service runtime shared by every Shuidian service: MQTT link, supervisor, database, migrations, outbox, health.

Exception tree (every package's root derives from `shuidian_shared.errors.ShuidianError`)::

    KitError
    ├── MqttUnavailable     the broker could not be reached in time to publish
    ├── MigrationError      a schema migration failed
    └── ServiceError        an answer to a request (`status_code`, `code`, `detail`): NotFound, Conflict
"""
