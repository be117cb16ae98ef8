"""Prefect flows composing tasks. No algorithm code here."""
