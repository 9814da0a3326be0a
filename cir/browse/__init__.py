"""`python -m cir.browse`: a local web page to query a gallery and to compare two models query by query.

session.py holds the query / compare logic as functions over cached features,
gallery.py loads a gallery through the evaluation's own encoder and cache,
render.py draws results (HTML for the page, PNG for export) and app.py wires
them into a Gradio page. Only app.py imports the web stack (`pip install -e
".[app]"`), so the core package never needs it.
"""
