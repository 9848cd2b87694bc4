"""cocalc-ctl: the operator's toolkit for a CoCalc-style project host."""

__version__ = "0.1.0"
