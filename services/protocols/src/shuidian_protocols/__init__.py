"""Pure field-protocol codecs (DL/T 645, CJ/T 188, Modbus device profiles): bytes in, values out, no I/O."""
