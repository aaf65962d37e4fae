"""SIMS Studio: a Gradio app over SQLAlchemy with background jobs.

UI tabs (studio.ui) call services (studio.services); services read/write the database
(studio.models via studio.db) and submit jobs; jobs (studio.jobs) run engine functions from
`pipelines` in worker processes and report progress into the database.
"""
__version__ = "0.1.0"
