"""Shuidian insights: the reading archive (抄表记录), saving advice, habits, tariff what-if and line loss."""
