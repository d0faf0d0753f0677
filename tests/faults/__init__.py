"""Fault tests: a real warnd process under attack or failure, judged by what still gets through."""
