"""Shuidian billing: tariffs, the prepaid ledger, payments, balance events."""
