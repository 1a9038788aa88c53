"""Scaling-law analysis of moelab results: laws, fits, uncertainty, validation, frontier, report."""
