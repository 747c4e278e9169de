"""The live view of campaigns in the browser: ``mlipilot dashboard`` and the orchestrator's
``--dashboard-port`` (feeds.py follows ledgers, views.py shapes them, server.py serves them)."""
