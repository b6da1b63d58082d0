"""The HTTP edge: an OpenAI-compatible chat API, feedback, health and admin routes, with the UI on the same port.

``app.create_app`` assembles it; ``server`` runs it. The routes reach the rest
of the product only through the pipeline (chat turns, feedback) and the admin
facade (everything under ``/admin``, and ``/health``).
"""
