"""Pure rules: poll scheduling and gateway health, poll statistics, reading and command rules, the device model and
its CSV form, availability maths. No I/O; time is passed in."""
