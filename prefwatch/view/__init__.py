"""What the monitor shows, without Textual: ``model`` (analysis -> plain view objects) and ``feed``
(reads the logs, paces the refreshes, decides what is news, and hands each view over)."""
