"""The review page of a run: what was found, what was replaced, what a person should
check, and how private it is (``record``: gathered as frames are written; ``page``:
the HTML; ``plots``: its charts)."""
