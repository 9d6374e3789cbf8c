"""The alarm service's pure core: rules, detectors, decisions and the other rules of the house. No I/O, no
framework, no clock: `now` is always passed in (import-linter holds it to that, `services/alarm/.importlinter`)."""
