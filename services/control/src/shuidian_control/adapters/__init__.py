"""Everything that touches the outside: SQL (commands, shadows, policy, calendar, schedules), the MQTT handlers
(`Automation.on_*`, `CommandLedger.on_result`) and the outbox, the library's holiday data, the housekeeping loop."""
