"""The dataset report of tools/inspect_dataset.py: numbers (``statistics``) and the HTML page (``html``)."""
