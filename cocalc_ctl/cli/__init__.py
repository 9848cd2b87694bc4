"""Typer apps, one module per noun. Parse, call an action, render. No logic lives here."""
