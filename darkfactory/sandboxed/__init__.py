"""Scripts the factory runs inside the sandbox with the target's interpreter (see `darkfactory/toolbox.py`).

The worker never imports them: each is copied into a tool directory and run as a file, with the tools it
needs on PYTHONPATH. They write JSON that the host reads back with a size limit and validates.
"""
