"""Fault-injection suites (hostile input, process faults) against real servers."""
