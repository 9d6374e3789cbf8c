"""Shuidian control: remote trip/close, keep-power, valves; policies; the command lifecycle."""
